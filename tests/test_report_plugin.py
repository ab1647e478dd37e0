"""The report plugin inside pytest: files written, history appended, --compare-to, JUnit XML."""

from __future__ import annotations

import dataclasses
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from report_data import synthetic_records

from editgate.editors.base import Editor
from editgate.registry import EDITORS
from editgate.report.history import History
from editgate.report.schema import load_run

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent

# A gate suite that replays recorded outcomes: the plugin sees exactly what real gate tests attach.
REPLAY = '''
import json, os, pytest

RECORDS = json.loads(open(os.environ["REPLAY_RECORDS"]).read())

@pytest.mark.parametrize("index", range(len(RECORDS)))
def test_replay(index, request):
    record = RECORDS[index]
    request.node.user_properties.append(("editgate", record))
    if record["kind"] == "gate":
        assert record["result"]["passed"], "gate failed"
    elif record["kind"] == "success":
        assert record["passed"], "edit did not take"
    elif record["kind"] == "edit":
        pytest.fail("edit failed", pytrace=False)
'''


@pytest.fixture
def replay(pytester, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path / "cache"))
    suite = pytester.path / "ability_tests"
    suite.mkdir()
    shutil.copy(ROOT / "ability_tests" / "tolerances.toml", suite / "tolerances.toml")
    (suite / "test_replay.py").write_text(REPLAY)
    pytester.makeconftest('pytest_plugins = ["editgate.plugin", "editgate.report.plugin"]')
    pytester.makeini(f"[pytest]\neditgate_data_dir = {data_dir}\n")

    def run(records: list[dict], *args: str):
        path = tmp_path / "records.json"
        path.write_text(json.dumps(records))
        monkeypatch.setenv("REPLAY_RECORDS", str(path))
        return pytester.runpytest("ability_tests", "-p", "no:cacheprovider", *args)

    return run


def test_run_writes_json_html_and_history_then_compares(replay, pytester, tmp_path):
    first = replay(synthetic_records(tmp_path / "items-1", damage_scale=0.0))
    first.assert_outcomes(passed=117)
    reports = pytester.path / "reports"
    run = load_run(reports / "latest.json")
    assert (reports / "runs" / f"{run.run_id}.html").is_file()
    assert run.tests.passed == 117 and len(run.cases) == 13 and run.passed
    assert run.environment.model_fingerprint == "f" * 24
    assert run.environment.command[:2] == ["pytest", "ability_tests"]
    assert [e.run_id for e in History(reports / "history.sqlite").entries()] == [run.run_id]
    first.stdout.fnmatch_lines(["*ability retention after editing*", "report reports/runs/*.html*"])

    second = replay(synthetic_records(tmp_path / "items-2", damage_scale=0.0), "--compare-to", "last")
    assert second.ret == 0
    second.stdout.fnmatch_lines([f"compared with run {run.run_id}*: no change*"])
    assert load_run(reports / "latest.json").comparison.base_run == run.run_id

    # A worse editor: gates fail anyway, and the comparison names what regressed.
    worse = replay(synthetic_records(tmp_path / "items-4"), "--compare-to", run.run_id[:18])
    assert worse.ret == 1
    worse.stdout.fnmatch_lines(["*regression*", "*regressed*budget rome/sequential-10 ≥10 → 1*"])
    assert len(History(reports / "history.sqlite").entries()) == 3


def test_fail_on_regression_fails_an_otherwise_green_session(replay, pytester, tmp_path):
    good = synthetic_records(tmp_path / "good", damage_scale=0.0)
    replay(good).assert_outcomes(passed=117)
    # Same verdicts, but every efficacy rate dropped by 0.2 (still at its threshold).
    drifted = [dict(r, rate=r["rate"] - 0.2) if r.get("metric") == "efficacy" else r for r in good]
    result = replay(drifted, "--fail-on-regression")
    result.assert_outcomes(passed=117)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*regressed*success*efficacy*", "*--fail-on-regression*"])


def test_options_no_report_and_unknown_run(replay, pytester, tmp_path):
    records = synthetic_records(tmp_path / "items", damage_scale=0.0)
    assert replay(records, "--no-report").ret == 0
    assert not (pytester.path / "reports").exists()
    result = replay(records, "--compare-to", "20990101")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--compare-to: no run '20990101'*"])
    custom = tmp_path / "elsewhere"
    assert replay(records, "--report-dir", str(custom)).ret == 0
    assert (custom / "latest.html").is_file() and (custom / "history.sqlite").is_file()
    again = replay(records, "--report-dir", str(custom), "--compare-to", str(custom / "latest.json"))
    again.stdout.fnmatch_lines(["compared with run *: no change*"])


# ------------------------------------------------------------------------- with the real suite


@dataclasses.dataclass
class _NoHParams:
    pass


class BrokenEditor(Editor):
    """An editor whose every edit raises: the CI example's "broken gate"."""

    name = "broken"
    HParams = _NoHParams

    def edit(self, ctx, requests, hparams):
        raise RuntimeError("rank-one update is singular")


FAST_ROME = ["--hparam", "rome.steps=3", "--hparam", "rome.context_template_length_params=[[5, 1]]",
             "--hparam", "rome.mom2=False", "--hparam", "rome.layer=1"]


def test_real_suite_report_and_junit_names(pytester, data_dir, tmp_path, monkeypatch):
    """The real gate suite on a tiny model: records → report; JUnit XML names tests readably and
    carries the gate's explanation as the failure message."""
    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(EDITORS._extra, "broken", BrokenEditor)
    shutil.copytree(ROOT / "ability_tests", pytester.path / "ability_tests")
    pytester.makeconftest('pytest_plugins = ["editgate.plugin", "editgate.fixtures", '
                          '"editgate.report.plugin"]')
    pytester.makeini(f"[pytest]\neditgate_data_dir = {data_dir}\n"
                     "filterwarnings = ignore::pytest.PytestAssertRewriteWarning\n")
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest("ability_tests", "--model", "tiny-llama", "--limit", "6",
                                "--editors", "rome,broken", "--regimes", "single",
                                "--abilities", "sentiment",
                                "-k", "test_ability", f"--junitxml={junit}", *FAST_ROME)
    result.assert_outcomes(passed=2, failed=2)
    run = load_run(pytester.path / "reports" / "latest.json")
    assert {c.id: c.error is None for c in run.cases} == {"rome-single": True, "broken-single": False}
    assert run.environment.model_fingerprint and run.environment.editors["rome"].source_sha256
    assert set(run.results["sentiment"]) == {"base", run.case("rome-single").state_key}
    assert run.timings.process.get("model_load_s") is not None  # the session ran in this process

    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert "test_ability[rome-single-sentiment-accuracy]" in cases
    broken = cases["test_ability[broken-single-sentiment-accuracy]"]
    assert broken.get("classname") == "ability_tests.test_gate"
    failure = broken.find("failure")
    assert "broken-single: edit failed" in failure.get("message")
    assert "rank-one update is singular" in failure.get("message")
