"""``python -m editgate.report merge``: shards of one matrix give the report of the whole matrix."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from editgate.report.cli import main as report_main
from editgate.report.history import HISTORY_FILE, History
from editgate.report.merge import MergeError, merge
from editgate.report.schema import RunReport, load_run, to_json

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent
FAST_ROME = ["--hparam", "rome.steps=3", "--hparam", "rome.context_template_length_params=[[5, 1]]",
             "--hparam", "rome.mom2=False", "--hparam", "rome.layer=1"]
MATRIX = ["--model", "tiny-llama", "--limit", "6", "--abilities", "sentiment",
          "--regimes", "single,sequential-2", "--checkpoints", "1,2",
          "-k", "test_ability or test_edit_success", *FAST_ROME]


def decisions(report: RunReport) -> dict:
    """What a run decided, without run ids, timings or where it ran."""
    return {
        "cases": sorted((c.id, c.editor, c.regime, c.checkpoint, c.state_key, c.error, c.passed)
                        for c in report.cases),
        "gates": sorted(to_json(g).items().__repr__() for g in report.gates),
        "success": sorted(to_json(s).items().__repr__() for s in report.success),
        "baselines": sorted(to_json(b).items().__repr__() for b in report.baselines),
        "budgets": sorted(to_json(b).items().__repr__() for b in report.budgets),
        "results": to_json(report.results),
        "passed": report.passed,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """The matrix (ROME and the noop control on tiny Llama) run whole, and as one shard per
    editor, each into its own report folder (one shared cache: the runs are deterministic, and
    sharing it only saves the shards their edits)."""
    work = tmp_path_factory.mktemp("merge")
    env = {**os.environ, "EDITGATE_CACHE_DIR": str(work / "cache")}
    folders = {}
    for name, editors in (("whole", "rome,noop"), ("rome", "rome"), ("noop", "noop")):
        project = work / name
        shutil.copytree(ROOT / "ability_tests", project / "ability_tests")
        (project / "conftest.py").write_text(
            'pytest_plugins = ["editgate.plugin", "editgate.fixtures", "editgate.report.plugin"]\n')
        (project / "pytest.ini").write_text(f"[pytest]\neditgate_data_dir = {data_dir}\n")
        done = subprocess.run([sys.executable, "-m", "pytest", "ability_tests", "-p",
                               "no:cacheprovider", "-q", "--editors", editors, *MATRIX],
                              cwd=project, env=env, capture_output=True, text=True, check=False)
        folders[name] = project / "reports"
        assert (folders[name] / "latest.json").is_file(), done.stdout[-2000:]
    return folders


def test_two_shards_merge_into_the_whole_matrix(runs):
    whole = load_run(runs["whole"] / "latest.json")
    shards = [load_run(runs[name] / "latest.json") for name in ("rome", "noop")]
    merged = merge(shards, run_id="merged")
    assert {c.editor for c in whole.cases} == {"rome", "noop"} and whole.budgets  # a real matrix
    assert decisions(merged) == decisions(whole)
    assert merged.tests.passed + merged.tests.failed == sum(s.tests.passed + s.tests.failed
                                                           for s in shards)
    assert merged.exit_status == (0 if whole.passed else 1)
    assert set(merged.environment.editors) == {"rome", "noop"}


def test_merge_command_writes_the_run_and_exits_with_its_verdict(runs, tmp_path, capsys):
    shard_files = [str(runs[name] / "latest.json") for name in ("rome", "noop")]
    status = report_main(["--report-dir", str(tmp_path), "--width", "100", "merge", *shard_files])
    (entry,) = History(tmp_path / HISTORY_FILE).entries()
    merged = load_run(tmp_path / "runs" / f"{entry.run_id}.json")
    assert (tmp_path / "runs" / f"{entry.run_id}.html").is_file()
    assert (tmp_path / "latest.json").read_text() == (tmp_path / "runs" / f"{entry.run_id}.json"
                                                      ).read_text()
    assert status == merged.exit_status == (0 if merged.passed else 1)
    assert merged.environment.command[-2:] == shard_files
    assert "merged 2 shard runs" in capsys.readouterr().out


def test_shards_of_different_runs_are_refused(runs):
    rome, noop = (load_run(runs[name] / "latest.json") for name in ("rome", "noop"))
    other_precision = dataclasses.replace(
        noop, environment=dataclasses.replace(noop.environment, eval_dtype="float16"))
    with pytest.raises(MergeError, match="eval_dtype"):
        merge([rome, other_precision], run_id="x", sources=["rome.json", "noop.json"])
    other_kernels = dataclasses.replace(noop, environment=dataclasses.replace(
        noop.environment, compute={**noop.environment.compute, "capability": "avx2"}))
    with pytest.raises(MergeError, match="compute"):
        merge([rome, other_kernels], run_id="x")
    gate = rome.gates[0]
    moved = dataclasses.replace(rome, gates=[dataclasses.replace(gate, edited=gate.edited + 1)])
    with pytest.raises(MergeError, match=f"gate '{gate.key}' differs between a.json and b.json"):
        merge([rome, moved], run_id="x", sources=["a.json", "b.json"])
    with pytest.raises(MergeError, match="no shard"):
        merge([], run_id="x")


def test_merge_command_reports_a_refusal_without_writing(runs, tmp_path, capsys):
    rome = runs["rome"] / "latest.json"
    bad = tmp_path / "bad.json"
    data = load_run(rome)
    data = dataclasses.replace(data, environment=dataclasses.replace(data.environment,
                                                                     profile="standard"))
    from editgate.report.schema import save_run

    save_run(data, bad)
    status = report_main(["--report-dir", str(tmp_path / "out"), "merge", str(rome), str(bad)])
    assert status == 2 and "profile" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
