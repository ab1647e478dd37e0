"""Golden baselines: the unedited model's aggregate scores, committed per model, profile and
precision.

``ability_tests/baselines/<model>/<profile>-<precision>.json`` (precision: the dtype the scoring
forwards run in, e.g. ``quick-bfloat16.json``) is human-readable and diffed in review, like
pytest-regressions' golden files. Every run checks the unedited model against it;
``--update-baselines`` rewrites the entries of the abilities that ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from editgate.cache import atomic_write_text, cache_key, cache_root, file_lock
from editgate.gate import aggregate, aggregate_ci

# Scores are deterministic on one machine; across BLAS builds log-probs move by ~1e-5.
MATCH_TOLERANCE = 1e-3


def golden_path(root: Path, model: str, profile: str, precision: str) -> Path:
    safe = model.replace("/", "__")
    return root / "ability_tests" / "baselines" / safe / f"{profile}-{precision}.json"


def summarize(plugin, ability: str) -> dict[str, Any]:
    session = plugin.session
    run = session.ability_run(ability)
    results = session.baseline(ability)
    metrics = {}
    for metric in run.ability.active_metrics(run.generation):
        low, high = aggregate_ci(results, metric.name)
        entry: dict[str, Any] = {"mean": round(aggregate(results, metric.name), 6),
                                 "ci95": [round(low, 6), round(high, 6)]}
        if metric.chance is not None:
            entry["chance"] = metric.chance
            entry["above_chance"] = bool(low > metric.chance)
        metrics[metric.name] = entry
    return {
        "items": len(results),
        "data_sha256": run.data_fingerprint,
        "prompt": run.style.key(),
        "metrics": metrics,
    }


def check_or_update(plugin, ability: str) -> list[str]:
    """Compare ``ability``'s baseline with the golden file; returns the mismatches (or updates)."""
    settings = plugin.settings
    current = summarize(plugin, ability)
    # The precision the runner actually scored in (it resolves --eval-dtype against the weights).
    precision = plugin.session.runner.eval_dtype
    path = golden_path(Path(plugin.config.rootpath), settings.model, settings.profile.name,
                       precision)
    if plugin.update_baselines:
        # The lock lives in the cache, not beside the committed file.
        with file_lock(cache_root() / "locks" / cache_key(golden=str(path.resolve()))):
            golden = json.loads(path.read_text()) if path.exists() else {}
            golden.update({"model": settings.model, "profile": settings.profile.name,
                           "precision": precision})
            golden.setdefault("abilities", {})[ability] = current
            golden["abilities"] = dict(sorted(golden["abilities"].items()))
            atomic_write_text(path, json.dumps(golden, indent=2) + "\n")
        return []
    if not path.exists():
        return [f"no golden baseline file {path}; create it with --update-baselines"]
    golden = json.loads(path.read_text()).get("abilities", {}).get(ability)
    if golden is None:
        return [f"{path} has no entry for {ability!r}; add it with --update-baselines"]
    problems = []
    for key in ("items", "data_sha256", "prompt"):
        if golden.get(key) != current[key]:
            problems.append(f"{ability}: {key} changed: golden {golden.get(key)!r}, "
                            f"now {current[key]!r}")
    for metric, entry in current["metrics"].items():
        expected = golden.get("metrics", {}).get(metric, {}).get("mean")
        if expected is None:
            problems.append(f"{ability}.{metric}: missing from the golden file")
        elif abs(expected - entry["mean"]) > MATCH_TOLERANCE:
            problems.append(f"{ability}.{metric}: golden {expected:.6f}, now {entry['mean']:.6f} "
                            f"(|Δ| > {MATCH_TOLERANCE})")
    return problems
