"""The pytest plugin end to end on a tiny random model (pytester runs a child pytest)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def suite(pytester, data_dir, tmp_path, monkeypatch):
    """A copy of ability_tests/ in a scratch rootdir, with its own cache."""
    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(ROOT / "ability_tests", pytester.path / "ability_tests")
    pytester.makeconftest('pytest_plugins = ["editgate.plugin", "editgate.fixtures"]')
    pytester.makeini(f"[pytest]\neditgate_data_dir = {data_dir}\n"
                     "filterwarnings = ignore::pytest.PytestAssertRewriteWarning\n")
    return pytester


FAST_ROME = ["--hparam", "rome.steps=3", "--hparam", "rome.context_templates=1",
             "--hparam", "rome.mom2=False", "--hparam", "rome.layer=1"]


def test_matrix_ids_and_selection(suite):
    result = suite.runpytest("ability_tests", "--model", "tiny-llama", "--editors", "rome",
                             "--regimes", "single,sequential-3", "--checkpoints", "1,2",
                             "--co", "-q")
    ids = "\n".join(result.outlines)
    assert "test_ability[rome-single-sentiment-accuracy]" in ids
    assert "test_ability[rome-sequential-3@2-sentiment-margin]" in ids
    assert "test_edit_success[rome-sequential-3-efficacy]" in ids
    assert "test_baseline[sentiment]" in ids


def test_gate_runs_and_summarises(suite):
    result = suite.runpytest("ability_tests", "--model", "tiny-llama", "--limit", "8",
                             "-k", "rome and test_ability", *FAST_ROME)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*ability retention after editing*", "*rome-single*"])


def test_unknown_names_are_usage_errors(suite):
    for args, message in [(["--editors", "nope"], "unknown editor 'nope'"),
                          (["--regimes", "double"], "unknown regime 'double'"),
                          (["--abilities", "juggling"], "unknown ability 'juggling'"),
                          (["--profile", "huge"], "unknown profile 'huge'"),
                          (["--tolerance", "x"], "--tolerance 'x'")]:
        result = suite.runpytest("ability_tests", "--model", "tiny-llama", *args)
        assert result.ret != 0
        result.stderr.fnmatch_lines([f"*{message}*"])
