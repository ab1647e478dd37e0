"""The gate: a paired per-item comparison of an edited model with its unedited baseline.

Both runs score the *same items with the same prompts*, so the quantity of interest is the mean of
per-item differences d_i = edited_i − baseline_i. Its 95 % confidence interval comes from a
percentile bootstrap over items (fixed seed: the same inputs always give the same interval).

Decision rule, per (ability, metric), with tolerance τ in the metric's own units:

    fail  ⇔  mean(d) < −τ   and   CI_high < 0

i.e. the drop is larger than tolerated *and* distinguishable from item noise. Identical weights
give d ≡ 0 and can never fail; a large, consistent drop always does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from editgate.abilities.base import ItemResult
from editgate.errors import ConfigError

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20240109  # arXiv 2401.04700's date; any fixed value would do


def bootstrap_ci(values: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean. Degenerate (one item, or all equal) gives a point."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (math.nan, math.nan)
    if data.size == 1 or np.all(data == data[0]):
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return (float(low), float(high))


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# ------------------------------------------------------------------------- micro-averaged F1
# An F1 over all items (NER's entity-level micro F1) is no mean of per-item values: its items carry
# "<metric>.tp/.fp/.fn" counts, and the statistic is 2·ΣTP / (2·ΣTP + ΣFP + ΣFN). Bootstrap
# resamples items and recomputes it, so CIs and paired deltas work exactly as for means.

COUNT_KEYS = ("tp", "fp", "fn")


def is_micro_f1(results: Sequence[ItemResult], metric: str) -> bool:
    return bool(results) and all(f"{metric}.tp" in r.metrics for r in results)


def _counts(results: Sequence[ItemResult], metric: str) -> np.ndarray:
    return np.array([[r.metrics[f"{metric}.{k}"] for k in COUNT_KEYS] for r in results],
                    dtype=np.float64)


def _micro_f1(sums: np.ndarray) -> np.ndarray:
    """F1 from [..., 3] summed counts; 1 where there was nothing to find and nothing found."""
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-12), 1.0)


def _bootstrap_counts(counts: list[np.ndarray], level: float = 0.95) -> tuple[float, float]:
    """CI of micro F1 (one array) or of its paired difference (edited − baseline: two arrays)."""
    n = counts[0].shape[0]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    index = rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    stats = [_micro_f1(c[index].sum(axis=1)) for c in counts]
    values = stats[0] if len(stats) == 1 else stats[1] - stats[0]
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def aggregate(results: Sequence[ItemResult], metric: str) -> float:
    """The run's score for ``metric``: micro F1 where items carry counts, else the mean."""
    if is_micro_f1(results, metric):
        return float(_micro_f1(_counts(results, metric).sum(axis=0)))
    return mean([r.metrics[metric] for r in results])


def aggregate_ci(results: Sequence[ItemResult], metric: str) -> tuple[float, float]:
    """95 % percentile-bootstrap CI of :func:`aggregate`."""
    if is_micro_f1(results, metric) and len(results) > 1:
        return _bootstrap_counts([_counts(results, metric)])
    return bootstrap_ci([r.metrics[metric] for r in results])


@dataclass(frozen=True)
class WorstItem:
    item_id: str
    baseline: float
    edited: float
    prediction_before: str
    prediction_after: str
    gold: str


@dataclass(frozen=True)
class GateResult:
    ability: str
    metric: str
    n_items: int
    baseline: float
    edited: float
    delta: float
    ci_low: float
    ci_high: float
    tolerance: float
    passed: bool
    worst: tuple[WorstItem, ...] = field(default=())

    def explain(self) -> str:
        verdict = "within" if self.passed else "OUTSIDE"
        lines = [
            f"{self.ability}.{self.metric}: baseline {self.baseline:.4f} → edited {self.edited:.4f}"
            f" (Δ {self.delta:+.4f}, 95% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}],"
            f" n={self.n_items}) is {verdict} tolerance −{self.tolerance:g}",
        ]
        if self.worst:
            lines.append("worst items (baseline → edited):")
            lines.extend(
                f"  {w.item_id}: {w.baseline:+.3f} → {w.edited:+.3f}  "
                f"pred {w.prediction_before!r:.40} → {w.prediction_after!r:.40} (gold {w.gold!r:.40})"
                for w in self.worst)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paired_gate(ability: str, metric: str, baseline: Sequence[ItemResult],
                edited: Sequence[ItemResult], tolerance: float, *, worst: int = 5) -> GateResult:
    """Compare per-item ``metric`` values of the same items before and after an edit."""
    before = {r.item_id: r for r in baseline}
    after = {r.item_id: r for r in edited}
    if before.keys() != after.keys():
        raise ValueError(f"{ability}: baseline and edited runs scored different items")
    ids = [r.item_id for r in baseline]
    b = np.array([before[i].metrics[metric] for i in ids], dtype=np.float64)
    e = np.array([after[i].metrics[metric] for i in ids], dtype=np.float64)
    diffs = e - b
    delta = float(diffs.mean()) if diffs.size else math.nan
    low, high = bootstrap_ci(diffs)
    base_score, edited_score = float(b.mean()), float(e.mean())
    if is_micro_f1(baseline, metric) and is_micro_f1(edited, metric):
        ordered_after = [after[i] for i in ids]
        base_score, edited_score = aggregate(baseline, metric), aggregate(ordered_after, metric)
        delta = edited_score - base_score
        low, high = ((delta, delta) if len(ids) < 2 else
                     _bootstrap_counts([_counts(baseline, metric), _counts(ordered_after, metric)]))
    passed = not (delta < -tolerance and high < 0)
    if not np.isfinite(diffs).all():  # NaN or Inf scores: a broken model never passes
        passed = False
    order = np.argsort(diffs, kind="stable")[:worst]
    worst_items = tuple(
        WorstItem(ids[i], float(b[i]), float(e[i]), before[ids[i]].prediction,
                  after[ids[i]].prediction, before[ids[i]].gold)
        for i in order if diffs[i] < 0)
    return GateResult(ability, metric, len(ids), base_score, edited_score, delta,
                      low, high, tolerance, passed, worst_items)


# ------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class Tolerances:
    """Per-(ability, metric) tolerances and edit-success thresholds from a TOML file."""

    table: Mapping[str, Any]
    overrides: Mapping[str, float] = field(default_factory=dict)
    source: str = "<memory>"

    @classmethod
    def load(cls, path: Path, overrides: Sequence[str] = ()) -> Tolerances:
        try:
            with open(path, "rb") as handle:
                table = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"tolerance file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        instance = cls(table, cls.parse_overrides(overrides), str(path))
        instance._check()
        return instance

    @staticmethod
    def parse_overrides(overrides: Sequence[str]) -> dict[str, float]:
        parsed: dict[str, float] = {}
        for text in overrides:
            key, sep, value = text.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not sep or "." not in key or not math.isfinite(number) or number < 0:
                raise ConfigError(
                    f"--tolerance {text!r}: expected ABILITY.METRIC=NUMBER with a number ≥ 0")
            parsed[key.strip()] = number
        return parsed

    def _check(self, table: Mapping[str, Any] | None = None, prefix: str = "") -> None:
        for section, values in (self.table if table is None else table).items():
            if not isinstance(values, dict):
                raise ConfigError(f"{self.source}: [{prefix}{section}] must be a table")
            for key, value in values.items():
                if isinstance(value, dict) and section == "edit_success":
                    self._check({key: value}, prefix="edit_success.")
                elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{self.source}: [{prefix}{section}] {key} = {value!r}: "
                                      "expected a number ≥ 0")

    def tolerance(self, ability: str, metric: str) -> float:
        key = f"{ability}.{metric}"
        if key in self.overrides:
            return self.overrides[key]
        for section in (ability, "default"):
            if metric in self.table.get(section, {}):
                return float(self.table[section][metric])
        raise ConfigError(f"{self.source}: no tolerance for {key} (add it to [{ability}] "
                          "or [default])")

    def success_threshold(self, metric: str, source: str = "counterfact") -> float:
        """Minimum edit-success rate: ``[edit_success.<source>]`` over ``[edit_success]``."""
        key = f"edit_success.{metric}"
        if key in self.overrides:
            return self.overrides[key]
        section = self.table.get("edit_success", {})
        specific = section.get(source, {})
        if isinstance(specific, dict) and metric in specific:
            return float(specific[metric])
        if metric in section and not isinstance(section[metric], dict):
            return float(section[metric])
        raise ConfigError(f"{self.source}: no edit-success threshold for {metric} "
                          "(add it to [edit_success])")
