"""Reliability: determinism, interrupted runs, corrupted caches, parallel writers.

End to end on a tiny random model in child pytest processes, comparing the JSON run reports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from editgate.cache import cache_key, json_cache
from editgate.report.schema import load_run

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ["--model", "tiny-llama", "--abilities", "sentiment", "--editors", "rome",
          "--regimes", "single,sequential-4",
          "--checkpoints", "2,4", "--limit", "10", "-k", "not baseline", "-p", "no:cacheprovider",
          "--hparam", "rome.steps=4", "--hparam", "rome.context_template_length_params=[[5, 1]]",
          "--hparam", "rome.mom2=False", "--hparam", "rome.layer=1"]


def _suite(tmp_path: Path, data_dir: Path) -> Path:
    work = tmp_path / "suite"
    shutil.copytree(ROOT / "ability_tests", work / "ability_tests")
    (work / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (work / "pytest.ini").write_text(f"[pytest]\neditgate_data_dir = {data_dir}\n")
    return work


def _command(report_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "ability_tests", *MATRIX, "--report-dir",
            str(report_dir), "-q"]


def _run(work: Path, cache: Path, report_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDITGATE_CACHE_DIR": str(cache)}
    return subprocess.run(_command(report_dir), cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)


def _decisions(report_dir: Path) -> dict:
    """Scores and decisions of the newest run report (no timings, ids or environment)."""
    (path,) = sorted((report_dir / "runs").glob("*.json"))[-1:]
    report = load_run(path)
    gates = {(g.case, g.ability, g.metric): (g.baseline, g.edited, g.delta, g.ci_low, g.ci_high,
                                             g.passed) for g in report.gates}
    success = {(s.case, s.metric): (s.rate, s.passed) for s in report.success}
    return {"gates": gates, "success": success}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """One uninterrupted run from a cold cache: the decisions every other run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    work = _suite(tmp, data_dir)
    result = _run(work, tmp / "cache", tmp / "reports")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return _decisions(tmp / "reports")


def test_same_command_twice_gives_identical_scores(reference, tmp_path, data_dir):
    """Cold cache again (nothing reused): every score, CI and decision is identical."""
    work = _suite(tmp_path, data_dir)
    result = _run(work, tmp_path / "cache", tmp_path / "reports")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    decisions = _decisions(tmp_path / "reports")
    assert decisions["gates"] and decisions == reference


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_to_the_same_report(reference, tmp_path, data_dir, sig):
    work = _suite(tmp_path, data_dir)
    cache = tmp_path / "cache"
    env = {**os.environ, "EDITGATE_CACHE_DIR": str(cache)}
    process = subprocess.Popen(_command(tmp_path / "killed"), cwd=work, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Interrupt mid-matrix: once the first deltas are cached, before the chain is complete.
    while time.monotonic() < deadline and len(list((cache / "deltas").glob("*.safetensors"))) < 2:
        if process.poll() is not None:
            pytest.fail("the run finished before it could be interrupted")
        time.sleep(0.05)
    process.send_signal(sig)
    process.wait(timeout=120)
    assert process.returncode != 0
    resumed = _run(work, cache, tmp_path / "reports")
    assert resumed.returncode in (0, 1), resumed.stdout + resumed.stderr
    assert _decisions(tmp_path / "reports") == reference


def test_corrupted_cache_files_are_recomputed_not_trusted(reference, tmp_path, data_dir):
    work = _suite(tmp_path, data_dir)
    cache = tmp_path / "cache"
    assert _run(work, cache, tmp_path / "first").returncode in (0, 1)
    damaged = 0
    for path in sorted((cache / "deltas").glob("*.safetensors"))[:2]:
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF  # flip bits inside the tensor bytes: still a loadable file
        path.write_bytes(bytes(data))
        damaged += 1
    for path in sorted((cache / "results").glob("*.json"))[:2]:
        path.write_text(path.read_text()[: len(path.read_text()) // 2])  # truncated
        damaged += 1
    assert damaged == 4
    result = _run(work, cache, tmp_path / "reports")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert _decisions(tmp_path / "reports") == reference


def _compute_once(args: tuple[str, str]) -> tuple[int, float]:
    cache_dir, marker = args
    os.environ["EDITGATE_CACHE_DIR"] = cache_dir
    from editgate.cache import cache_path

    path = cache_path("test", cache_key(k="same"), ".json")

    def compute() -> float:
        with open(marker, "a") as handle:  # count real computations
            handle.write("x")
        time.sleep(0.5)
        return 42.0

    return os.getpid(), json_cache(path, compute)


def test_two_processes_writing_one_key_compute_it_once(tmp_path):
    marker = tmp_path / "computed"
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_compute_once, [(str(tmp_path), str(marker))] * 2))
    assert [value for _, value in results] == [42.0, 42.0]
    assert marker.read_text() == "x"  # the second writer waited and loaded the first's result
    leftovers = [p.name for p in (tmp_path / "test").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_parallel_workers_share_caches_safely(reference, tmp_path, data_dir):
    """`-n 2` from a cold cache: both workers need the baselines, one computes them."""
    work = _suite(tmp_path, data_dir)
    env = {**os.environ, "EDITGATE_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([*_command(tmp_path / "reports"), "-n", "2", "--dist", "loadgroup"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert _decisions(tmp_path / "reports") == reference
