"""Synthetic but realistic outcome records for the report tests: what the gate suite attaches to
its test reports, for several editors, sequential checkpoints, several abilities, a failing gate
and a failed edit, with per-item result files in the results-cache format."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from editgate.abilities.base import ItemResult
from editgate.gate import paired_gate

# ability → (metric, kind, chance, unit) ; the paper metric first
ABILITIES = {
    "sentiment": [("accuracy", "paper", 0.5, ""), ("margin", "continuous", None, "nats")],
    "nli": [("accuracy", "paper", 0.5, ""), ("gold_logprob", "continuous", None, "nats")],
    "reasoning": [("solve_rate", "paper", 0.0, ""), ("answer_logprob", "continuous", None, "nats")],
}
# editor → regime → damage per checkpoint (fraction of items flipped, logprob shift)
EDITORS = {
    "rome": {"single": {1: 0.0}, "sequential-10": {1: 0.0, 5: 0.08, 10: 0.3}},
    "memit": {"single": {1: 0.0}, "sequential-10": {1: 0.0, 5: 0.02, 10: 0.05},
              "batch-10": {10: 0.03}},
    "alphaedit": {"single": {1: 0.0}, "sequential-10": {1: 0.0, 5: 0.0, 10: 0.01}},
}
SUCCESS = {"efficacy": 0.8, "paraphrase": 0.5, "neighborhood": 0.5}
N_ITEMS = 40


def _case(editor: str, regime: str, checkpoint: int, total: int) -> dict[str, Any]:
    suffix = f"@{checkpoint}" if checkpoint != total else ""
    new_edits = {"single": 1, "batch-10": 10}.get(regime) or checkpoint - {1: 0, 5: 1, 10: 5}[checkpoint]
    seconds = 0.0 if editor == "alphaedit" else 7.5 * new_edits  # alphaedit: all deltas cached
    return {"id": f"{editor}-{regime}{suffix}", "editor": editor, "regime": regime,
            "checkpoint": checkpoint, "edit_seconds": seconds, "error": None,
            "state_key": f"state-{editor}-{regime}-{checkpoint}"}


def _items(ability: str, damage: float, rng: random.Random) -> list[ItemResult]:
    items = []
    for i in range(N_ITEMS):
        base_rng = random.Random(f"{ability}-{i}")
        correct = base_rng.random() < 0.8
        logprob = -base_rng.uniform(0.2, 2.5)
        if damage and rng.random() < damage * 2:
            correct = False
        logprob -= damage * rng.uniform(0, 6)
        metrics = {name: (float(correct) if kind == "paper" else logprob)
                   for name, kind, _, _ in ABILITIES[ability]}
        gold = "positive" if i % 2 else "negative"
        prediction = gold if correct else ("negative" if i % 2 else "positive")
        items.append(ItemResult(f"{ability}-{i:04d}", prediction, gold, metrics))
    return items


def _write(path: Path, items: list[ItemResult]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "value": [r.to_json() for r in items]}))
    return str(path)


def synthetic_records(folder: Path, *, seed: int = 0, damage_scale: float = 1.0,
                      memit_error: bool = False) -> list[dict[str, Any]]:
    """Records of a run: rome breaks at 10 sequential edits, memit and alphaedit hold up."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    base = {a: _items(a, 0.0, random.Random(0)) for a in ABILITIES}
    base_paths = {a: _write(folder / f"base-{a}.json", base[a]) for a in ABILITIES}
    for editor, regimes in EDITORS.items():
        for regime, checkpoints in regimes.items():
            total = max(checkpoints)
            for checkpoint, damage in checkpoints.items():
                case = _case(editor, regime, checkpoint, total)
                if memit_error and editor == "memit" and regime == "batch-10":
                    case["error"] = "EditFailure: memit produced a delta with NaN/Inf values"
                    records.append({"kind": "edit", "case": case})
                    continue
                for ability, metrics in ABILITIES.items():
                    edited = _items(ability, damage * damage_scale, rng)
                    path = _write(folder / f"{case['state_key']}-{ability}.json", edited)
                    for metric, _, _, _ in metrics:
                        tolerance = 0.05 if metric in ("accuracy", "solve_rate") else 0.1
                        result = paired_gate(ability, metric, base[ability], edited, tolerance)
                        records.append({"kind": "gate", "case": case, "ability": ability,
                                        "metric": metric, "result": result.to_json(),
                                        "model_fingerprint": "f" * 24,
                                        "baseline_results": base_paths[ability],
                                        "edited_results": path})
                for metric, threshold in SUCCESS.items():
                    rate = 1.0 if metric != "paraphrase" else [0.4, 0.6, 0.7][checkpoint % 3]
                    probes = checkpoint * (1 if metric == "efficacy" else 2)
                    records.append({"kind": "success", "case": case, "metric": metric,
                                    "rate": rate, "threshold": threshold,
                                    "passed": rate >= threshold, "probes": probes,
                                    "failed": [] if rate >= threshold else ["cf-0001"]})
    return records


def synthetic_environment(**changes: Any):
    from editgate.report.schema import AbilityInfo, EditorInfo, Environment, MetricInfo

    env = Environment(
        model="smollm2-135m", profile="quick", model_fingerprint="f" * 24, limit=40,
        git_commit="a" * 40, git_dirty=False, libraries={"torch": "2.13.0"},
        editors={e: EditorInfo(e, "1", "b" * 64, can_batch=e != "rome") for e in EDITORS},
        abilities={a: AbilityInfo(a, "1", [MetricInfo(m, k, c, u) for m, k, c, u in metrics])
                   for a, metrics in ABILITIES.items()})
    for key, value in changes.items():
        setattr(env, key, value)
    return env


def synthetic_report(folder: Path, *, run_id: str = "20250101T000000Z-aaaaaa",
                     created: str = "2025-01-01T00:00:00+00:00", **kwargs: Any):
    from editgate.report.collect import build_report

    return build_report(synthetic_records(folder, **kwargs), synthetic_environment(),
                        run_id=run_id, created=created)
