"""Golden baselines: the unedited model's scores, committed per model and profile, in float32.

``<baselines dir>/<model>/<profile>-<precision>.json`` (default dir ``ability_tests/baselines``,
``--baselines-dir`` or ini ``editgate_baselines_dir`` to keep a plugin's goldens beside its own
tests) is human-readable and diffed in review, like pytest-regressions' golden files. For each
ability it holds the item count, the data and request digests, every metric's mean and 95 % CI,
and every item's prediction. ``--update-baselines`` rewrites the entries of the abilities that ran.

Why float32, whatever ``--eval-dtype`` the gates use: goldens must hold on any machine, and
``benchmarks/kernel_variation.py`` measured that bf16 scores do not. Across AVX-512 with and
without bf16 instructions, AVX2 and one thread, float32 changed no prediction of any quick item
and no metric mean by more than 3e-5; bf16 flipped up to 2 of 50 items of an ability and moved
means by up to 0.04. A tolerance wide enough for bf16 would hide a real change of two items, so
the goldens are scored in float32 and checked exactly on predictions, to :data:`MEAN_TOLERANCE`
on means: one item's changed float32 prediction fails the check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from editgate.abilities.base import AbilityRun, ItemResult
from editgate.cache import atomic_write_text, cache_key, cache_root, file_lock
from editgate.gate import aggregate, aggregate_ci

GOLDEN_FORMAT = 2
# Float32 means moved by at most 3e-5 across the CPU kernels measured: 30x headroom.
MEAN_TOLERANCE = 1e-3
# Predictions longer than this are stored as a digest (generated summaries, NER lists).
SHORT_PREDICTION = 48


def golden_precision(weights: torch.dtype) -> str:
    """float32 for float32 weights; a model loaded in bf16/fp16 has no float32 forward."""
    return str(weights).removeprefix("torch.")


def golden_path(directory: Path, model: str, profile: str, precision: str) -> Path:
    return directory / model.replace("/", "__") / f"{profile}-{precision}.json"


def _prediction(text: str) -> str:
    if len(text) <= SHORT_PREDICTION:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def summarize(run: AbilityRun, results: Sequence[ItemResult], requests_digest: str | None,
              ) -> dict[str, Any]:
    """The golden entry of one ability: what was scored, every metric's mean and CI, and every
    item's prediction."""
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
        "requests_sha256": requests_digest,
        "prompt": run.style.key(),
        "metrics": metrics,
        "predictions": {r.item_id: _prediction(r.prediction) for r in results},
    }


def update(path: Path, header: dict[str, str], ability: str, entry: dict[str, Any]) -> None:
    """Write ``entry`` for ``ability`` into the golden file (other abilities kept), atomically."""
    # The lock lives in the cache, not beside the committed file.
    with file_lock(cache_root() / "locks" / cache_key(golden=str(path.resolve()))):
        golden = json.loads(path.read_text()) if path.exists() else {}
        golden.update(header, format=GOLDEN_FORMAT)
        golden.setdefault("abilities", {})[ability] = entry
        golden["abilities"] = dict(sorted(golden["abilities"].items()))
        atomic_write_text(path, json.dumps(golden, indent=2) + "\n")


def check(path: Path, ability: str, current: dict[str, Any]) -> list[str]:
    """Differences between ``current`` and the golden entry of ``ability`` (empty: it matches)."""
    fix = "regenerate with --update-baselines and review the diff"
    if not path.exists():
        return [f"no golden baseline file {path}; create it with --update-baselines"]
    golden_file = json.loads(path.read_text())
    if golden_file.get("format") != GOLDEN_FORMAT:
        return [f"{path} is in an older format; {fix}"]
    golden = golden_file.get("abilities", {}).get(ability)
    if golden is None:
        return [f"{path} has no entry for {ability!r}; add it with --update-baselines"]
    problems = []
    for key in ("items", "data_sha256", "requests_sha256", "prompt"):
        if golden.get(key) != current[key]:
            problems.append(f"{ability}: {key} changed: golden {golden.get(key)!r}, "
                            f"now {current[key]!r}")
    for metric, entry in current["metrics"].items():
        expected = golden.get("metrics", {}).get(metric, {}).get("mean")
        if expected is None:
            problems.append(f"{ability}.{metric}: missing from the golden file")
        elif abs(expected - entry["mean"]) > MEAN_TOLERANCE:
            problems.append(f"{ability}.{metric}: golden {expected:.6f}, now {entry['mean']:.6f} "
                            f"(|Δ| > {MEAN_TOLERANCE})")
    before, after = golden.get("predictions", {}), current["predictions"]
    changed = [i for i in after if i in before and before[i] != after[i]]
    if changed:
        shown = ", ".join(f"{i}: {before[i]!r} → {after[i]!r}" for i in changed[:5])
        more = f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""
        problems.append(f"{ability}: {len(changed)} item prediction(s) changed: {shown}{more}")
    if problems:
        problems.append(f"if the change is intended, {fix}")
    return problems


class GoldenBaselines:
    """The golden check of one run: compares the unedited model's float32 scores with (or, with
    ``update``, writes them to) the golden file under ``directory``.

    ``score(ability)`` gives the ability's entry as scored now (:func:`summarize` of the golden
    results; the session provides it), so this module needs nothing of the session.
    """

    def __init__(self, directory: Path, update: bool, *, model: str, profile: str, precision: str,
                 score: Callable[[str], dict[str, Any]]) -> None:
        self.directory, self.update, self.score = directory, update, score
        self.header = {"model": model, "profile": profile, "precision": precision}

    @property
    def path(self) -> Path:
        return golden_path(self.directory, **self.header)

    def verify(self, ability: str) -> tuple[dict[str, Any], list[str]]:
        """(the ability's golden entry as scored now, its differences from the golden file)."""
        current = self.score(ability)
        if self.update:
            update(self.path, self.header, ability, current)
            return current, []
        return current, check(self.path, ability, current)
