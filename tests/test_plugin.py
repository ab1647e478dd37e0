"""The pytest plugin end to end on a tiny random model.

Child runs are subprocesses: pytester's in-process mode unloads modules imported during a run,
and torch cannot re-import some of its submodules in one process.
"""

from __future__ import annotations

import json
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


# One ability keeps these runs about the plugin's mechanics, not about scoring many tasks.
BASE = ["ability_tests", "--model", "tiny-llama", "--abilities", "sentiment"]
FAST_ROME = ["--hparam", "rome.steps=3", "--hparam", "rome.context_template_length_params=[[5, 1]]",
             "--hparam", "rome.mom2=False", "--hparam", "rome.layer=1"]


def test_matrix_ids_and_selection(suite):
    result = suite.runpytest_subprocess(*BASE, "--editors", "rome",
                             "--regimes", "single,sequential-3", "--checkpoints", "1,2",
                             "--co", "-q")
    ids = "\n".join(result.outlines)
    assert "test_ability[rome-single-sentiment-accuracy]" in ids
    assert "test_ability[rome-sequential-3@2-sentiment-margin]" in ids
    assert "test_edit_success[rome-sequential-3-efficacy]" in ids
    assert "test_baseline[sentiment]" in ids


def test_gate_runs_and_summarises(suite):
    result = suite.runpytest_subprocess(*BASE, "--limit", "8", "--editors", "rome",
                                        "--regimes", "single", "-k", "test_ability", *FAST_ROME)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*edit case*", "*rome-single*"])


FAULTY_EDITORS = '''
import torch
from dataclasses import dataclass
from editgate.delta import WeightDelta
from editgate.editors.base import Editor
from editgate.registry import EDITORS


@dataclass(frozen=True)
class NoParams:
    pass


@EDITORS.register("test-raises")
class Raises(Editor):
    name = "test-raises"
    HParams = NoParams

    def edit(self, ctx, requests, hp):
        raise RuntimeError("boom")


@EDITORS.register("test-nan")
class NaNs(Editor):
    name = "test-nan"
    HParams = NoParams

    def edit(self, ctx, requests, hp):
        name = ctx.lm.layout.weight_name(0)
        weight = dict(ctx.lm.model.named_parameters())[name]
        return WeightDelta({name: torch.full(weight.shape, float("nan"))})
'''


def test_faulty_editors_fail_their_tests_and_the_run_continues(suite):
    suite.makeconftest('pytest_plugins = ["editgate.plugin", "editgate.fixtures"]\n'
                       + FAULTY_EDITORS)
    result = suite.runpytest_subprocess(*BASE, "--limit", "6",
                             "--editors", "test-raises,test-nan,rome", "--regimes", "single",
                             "-k", "not baseline", *FAST_ROME)
    outcomes = result.parseoutcomes()
    # 2 faulty editors × (2 ability gates + 3 success gates) fail; rome's gates still run.
    assert outcomes["failed"] >= 10
    result.stdout.fnmatch_lines(["*test-raises-single: edit failed*RuntimeError: boom*",
                                 "*test-nan-single: edit failed*NaN*"])
    assert "rome-single" in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_batch_regimes_skip_editors_that_cannot_batch(suite):
    result = suite.runpytest_subprocess(*BASE, "--limit", "4",
                             "--editors", "rome", "--regimes", "batch-2", "-rs",
                             "-k", "not baseline")
    result.assert_outcomes(skipped=5)
    result.stdout.fnmatch_lines(["*rome edits one request per call; batch-2 needs batches of 2*"])


def test_sequential_chain_reuses_cached_deltas_and_reports_budget(suite):
    args = [*BASE, "--limit", "6", "--editors", "rome",
            "--regimes", "sequential-3", "--checkpoints", "1,2", "-k", "test_ability",
            *FAST_ROME]
    first = suite.runpytest_subprocess(*args)
    first.stdout.fnmatch_lines(["*edit budget*rome sequential-3*"])
    second = suite.runpytest_subprocess(*args)  # everything cached: same decisions, no editor time
    assert first.parseoutcomes() == second.parseoutcomes()
    table = [line for line in second.outlines if "rome-sequential-3" in line]
    assert table and all(line.rstrip(" │").endswith("cached") for line in table)


def test_xdist_loadgroup_runs_the_matrix(suite):
    result = suite.runpytest_subprocess(
        *BASE, "--limit", "4", "--editors", "rome",
        "--regimes", "single,sequential-2", "-k", "test_ability", "-n", "2",
        "--dist", "loadgroup", *FAST_ROME)
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*rome-single*", "*rome-sequential-2*"])


def test_zsre_edit_source(suite):
    result = suite.runpytest_subprocess(*BASE, "--limit", "4",
                             "--editors", "rome", "--regimes", "single", "--edit-source", "zsre",
                             "-k", "neighborhood", *FAST_ROME)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1
    result.stdout.fnmatch_lines(["*neigh*", "*rome-single*"])


def test_hparam_values_read_as_python_or_toml_literals():
    from editgate.plugin import _parse_assignments

    parsed = _parse_assignments(["memit.through_post_norm=false", "rome.mom2=False",
                             "memit.layers=(3,4)", "memit.mom2_weight=5e3", "x.name=word"])
    assert parsed == {"memit": {"through_post_norm": False, "layers": (3, 4), "mom2_weight": 5e3},
                      "rome": {"mom2": False}, "x": {"name": "word"}}


GHOST_ABILITY = '''
import dataclasses
from editgate.abilities.sentiment import Sentiment
from editgate.registry import ABILITIES


@ABILITIES.register("ghost")
class Ghost(Sentiment):
    name = "ghost"
    dataset = dataclasses.replace(Sentiment.dataset, folder="ghost", hub=None)
'''


def test_an_ability_without_its_data_is_skipped_and_the_others_run(suite):
    suite.makeconftest('pytest_plugins = ["editgate.plugin", "editgate.fixtures"]\n'
                       + GHOST_ABILITY)
    result = suite.runpytest_subprocess(
        "ability_tests", "--model", "tiny-llama", "--abilities", "ghost,sentiment", "--limit", "6",
        "--editors", "noop", "--regimes", "single", "-k", "test_ability or test_baseline", "-rs")
    outcomes = result.parseoutcomes()
    # sentiment's two gates pass (its golden check skips under --limit); ghost's golden check is
    # its one test, skipped with the missing file and the fix; ghost has no gate tests.
    assert outcomes["passed"] == 2 and outcomes["skipped"] == 2
    result.stdout.fnmatch_lines([
        "skipped ability ghost: */ghost/validation.jsonl: file not found*--abilities*",
        "SKIPPED*ghost: */ghost/validation.jsonl: file not found. Put the file there*"])
    assert "ghost-accuracy" not in result.stdout.str()


POISON_EDITOR = '''
import torch
from dataclasses import dataclass
from editgate.delta import WeightDelta
from editgate.editors.base import Editor
from editgate.registry import EDITORS


@dataclass(frozen=True)
class PoisonParams:
    harmless: int = 12  # edits before the damage starts: the planted budget


@EDITORS.register("test-poison")
class Poison(Editor):
    """Changes nothing for its first `harmless` edits, then scrambles the (tied) output
    embedding with every call."""
    name = "test-poison"
    HParams = PoisonParams
    can_batch = True

    def edit(self, ctx, requests, hp):
        done = int(ctx.state.get("edits", torch.tensor(0))) + len(requests)
        ctx.state["edits"] = torch.tensor(done)
        if done <= hp.harmless:
            return WeightDelta({}, {"editor": self.name})
        head = ctx.lm.model.get_output_embeddings().weight
        name = next(n for n, p in ctx.lm.model.named_parameters() if p is head)
        return WeightDelta({name: 10 * torch.randn(head.shape)}, {"editor": self.name})
'''


def test_budget_search_finds_a_planted_budget(suite):
    """Damage planted after edit 12 of a 40-edit chain made 2 at a time: the search brackets it
    exactly (12 passes, 14 fails), scoring far fewer states than the 20 calls of the chain."""
    suite.makeconftest('pytest_plugins = ["editgate.plugin", "editgate.fixtures"]\n'
                       + POISON_EDITOR)
    args = ["ability_tests", "--model", "tiny-llama", "--abilities", "kl_drift", "--limit", "4",
            "--editors", "test-poison", "--regimes", "batch-2-sequential-40", "--budget-search",
            "-k", "test_edit_budget", "-p", "no:randomly"]
    result = suite.runpytest_subprocess(*args)
    result.assert_outcomes(failed=1)
    assert ("test-poison batch-2-sequential-40: every gate passes up to 12 edits, one fails by "
            "14 (scored at [2, 4, 8, 16, 12, 14])") in result.stdout.str()
    result.stdout.fnmatch_lines(["*edit budget*test-poison batch-2-sequential-40 12*"])
    run = json.loads((suite.path / "reports" / "latest.json").read_text())
    (budget,) = run["budgets"]
    assert (budget["budget"], budget["first_failure"], budget["max_checkpoint"]) == (12, 14, 40)
    assert sorted(c["checkpoint"] for c in run["cases"]) == [2, 4, 8, 12, 14, 16]
    # Interrupted or not, a rerun resumes from the cached chain: no edit is made again.
    again = suite.runpytest_subprocess(*args)
    again.assert_outcomes(failed=1)
    rerun = json.loads((suite.path / "reports" / "latest.json").read_text())
    assert all(c["edit_seconds"] == 0 for c in rerun["cases"])


def test_without_budget_search_the_budget_test_is_deselected(suite):
    result = suite.runpytest_subprocess(*BASE, "--editors", "rome", "--regimes", "sequential-3",
                                        "--co", "-q")
    assert "test_edit_budget" not in result.stdout.str()
    assert "test_ability[rome-sequential-3-sentiment-accuracy]" in result.stdout.str()
    searched = suite.runpytest_subprocess(*BASE, "--editors", "rome",
                                          "--regimes", "single,sequential-3", "--budget-search",
                                          "--co", "-q")
    assert "test_edit_budget[rome-sequential-3]" in searched.stdout.str()
    assert "rome-sequential-3@" not in searched.stdout.str()  # no grid for a searched chain
    assert "test_ability[rome-single-sentiment-accuracy]" in searched.stdout.str()
