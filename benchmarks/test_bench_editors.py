"""Editors on SmolLM2: edit quality and seconds per edit, covariance statistics, MEND training.

    pytest benchmarks/test_bench_editors.py --benchmark-only -s              # all (hours, 2 cores)
    pytest benchmarks/test_bench_editors.py --benchmark-only -s -k memit     # one editor
    BENCH_MEND_FULL=1 pytest benchmarks/test_bench_editors.py --benchmark-only -s -k mend_training

Quality: the first 20 CounterFact-edit requests, with each editor's shipped hyper-parameters —
one request per call for the single-edit editors (and ``memit-single``), one call with all 20
for MEMIT, AlphaEdit and memit+rect — scored on the edited model (efficacy, paraphrase,
neighborhood; editgate's edit_success). Time per edit is the editor's wall time over the 20
requests divided by 20, excluding the one-off covariance statistics and MEND training, which
are measured on their own. Rows accumulate in ``reports/editors.json``; the table prints after
each row (and with ``python benchmarks/test_bench_editors.py``).
The CPU is shared, so timings are noisy: rerun and keep the better figure.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from editgate.edit_success import edit_success, locality_reference, success_rate
from editgate.editors.base import EditContext
from editgate.edits import load_edit_requests
from editgate.registry import EDITORS

N_REQUESTS = 20
# label → (editor, hparam overrides, requests per call). One call with all 20 requests for the
# batch editors; MEMIT also one request per call, as the suite's `single` regime runs it.
CASES = {
    "noop": ("noop", {}, 1),
    "rome": ("rome", {}, 1),
    "r-rome": ("r-rome", {}, 1),
    "rome+rect": ("rome+rect", {}, 1),
    "memit": ("memit", {}, N_REQUESTS),
    "memit-single": ("memit", {}, 1),
    "memit+rect": ("memit+rect", {}, N_REQUESTS),
    "alphaedit": ("alphaedit", {}, N_REQUESTS),
    "ft-l": ("ft-l", {}, 1),
    "kn": ("kn", {}, 1),
    "mend": ("mend", {}, 1),  # the small (CI) training config
    "mend-full": ("mend", {"config": "full"}, 1),
}
REPORT = Path(__file__).resolve().parents[1] / "reports" / "editors.json"


def _record(key: str, row: dict) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    table[key] = row
    REPORT.write_text(json.dumps(table, indent=2, sort_keys=True))


def _prepare(lm, data_dir, name: str, hp) -> None:
    """One-off costs that are benchmarked separately: covariance statistics, MEND training."""
    from editgate.stats import second_moments

    layers = getattr(hp, "layers", None) or ([hp.layer] if hasattr(hp, "layer") else [])
    if hasattr(hp, "mom2_tokens") and getattr(hp, "mom2", True):
        second_moments(lm, list(layers), data_dir, n_tokens=hp.mom2_tokens)
    if name == "mend":
        from editgate.editors.mend import mend_layers, trained_network

        trained_network(lm, mend_layers(lm, hp), hp.config, data_dir)


@pytest.mark.parametrize("label", sorted(CASES))
def test_editor_quality_and_speed(benchmark, lm, data_dir, label):
    name, overrides, batch = CASES[label]
    requests, _ = load_edit_requests("counterfact", data_dir, N_REQUESTS)
    editor = EDITORS.get(name)()
    hp = editor.hparams(lm, overrides)
    _prepare(lm, data_dir, name, hp)
    chunks = [requests[i:i + batch] for i in range(0, N_REQUESTS, batch)]

    def edit_all():
        return [editor.edit(EditContext(lm, data_dir), chunk, hp) for chunk in chunks]

    start = time.perf_counter()
    deltas = benchmark.pedantic(edit_all, rounds=1, iterations=1)
    seconds = time.perf_counter() - start
    from editgate.runner import AbilityRunner

    runner = AbilityRunner(lm)
    reference = locality_reference(runner, [r for chunk in chunks for r in chunk])  # unedited
    outcomes: dict[str, list] = {}
    for chunk, delta in zip(chunks, deltas):
        with delta.applied(lm.model):
            for metric, items in edit_success(runner, chunk, reference).items():
                outcomes.setdefault(metric, []).extend(items)
    row = {metric: round(success_rate(items), 3) for metric, items in outcomes.items()}
    row.update(seconds_per_edit=round(seconds / N_REQUESTS, 2), batch=batch,
               mean_delta_norm=round(sum(d.norm() for d in deltas) / len(deltas), 2),
               threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    benchmark.extra_info.update(row)
    _record(label, row)
    print(f"\n{label} (batch {batch}): {row}\n{table_markdown()}")


def test_covariance_statistics_five_layers(benchmark, lm, data_dir, tmp_path, monkeypatch):
    """C = E[kkᵀ] for MEMIT's five SmolLM2 layers over 100k corpus tokens, from an empty cache."""
    from editgate.stats import second_moments

    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path))
    layers = list(EDITORS.get("memit")().hparams(lm).layers)
    start = time.perf_counter()
    benchmark.pedantic(lambda: second_moments(lm, layers, data_dir, n_tokens=100_000),
                       rounds=1, iterations=1)
    _record("statistics", {"layers": layers, "tokens": 100_000,
                           "seconds": round(time.perf_counter() - start, 1)})


@pytest.mark.parametrize("config", ["small", "full"])
def test_mend_training(benchmark, lm, data_dir, config, tmp_path, monkeypatch):
    """MEND's training time per config. small: from an empty cache. full (BENCH_MEND_FULL=1): in
    the real cache, so the hour is not thrown away; if it is cached already, its recorded time."""
    if config == "full" and not os.environ.get("BENCH_MEND_FULL"):
        pytest.skip("the full config trains for a long time; set BENCH_MEND_FULL=1")
    from editgate.editors.mend import MEND, mend_layers, trained_network

    if config == "small":
        monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path))
    layers = mend_layers(lm, MEND().hparams(lm))
    network = benchmark.pedantic(lambda: trained_network(lm, layers, config, data_dir),
                                 rounds=1, iterations=1)
    _record(f"mend-training-{config}", {"seconds": round(network.train_seconds, 1),
                                        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None})


def table_markdown() -> str:
    """The accumulated rows as the README's markdown table (``python benchmarks/test_bench_editors.py``)."""
    table = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    lines = ["| editor | batch | efficacy | paraphrase | neighborhood | s/edit | mean ‖Δ‖ |",
             "|---|---|---|---|---|---|---|"]
    for key, row in sorted(table.items()):
        if "efficacy" in row:
            lines.append(f"| {key} | {row['batch']} | {row['efficacy']:.2f} | "
                         f"{row['paraphrase']:.2f} | {row['neighborhood']:.2f} | "
                         f"{row['seconds_per_edit']} | {row['mean_delta_norm']} |")
    lines += [f"{key}: {table[key]}" for key in ("statistics", "mend-training-small",
                                                  "mend-training-full") if key in table]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table_markdown())
