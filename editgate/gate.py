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


# ------------------------------------------------------------------------- corpus statistics
# Some paper metrics are no mean of per-item values. Their items carry the statistic's inputs
# under "<metric>.<column>" keys, and the statistic is computed over all items:
#
#   micro F1     (NER's entity-level F1)        "<metric>.tp/.fp/.fn" counts
#   weighted F1  (metric "weighted_f1")         "<metric>.pred/.gold" class indices, −1 = no answer
#   MCC          (metric "mcc")                 "<metric>.pred/.gold" likewise
#
# weighted F1 and MCC are scikit-learn's ``f1_score(average="weighted")`` and
# ``matthews_corrcoef``, as the glue_eval harness of lifelong-editing papers reports them. Bootstrap
# resamples items and recomputes the statistic, so CIs and paired deltas work as for means.

COUNT_KEYS = ("tp", "fp", "fn")
LABEL_KEYS = ("pred", "gold")


def _micro_f1(columns: np.ndarray) -> np.ndarray:
    """F1 from [..., n, 3] counts; 1 where there was nothing to find and nothing found."""
    sums = columns.sum(axis=-2)
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-12), 1.0)


def _one_hot(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., n, C] indicators of predicted and gold class (class set: every value present)."""
    classes = np.unique(columns)
    pred = (columns[..., 0, None] == classes).astype(np.float64)
    gold = (columns[..., 1, None] == classes).astype(np.float64)
    return pred, gold


def _weighted_f1(columns: np.ndarray) -> np.ndarray:
    """Σ_c support_c · F1_c / Σ_c support_c over the classes (a class never predicted nor true
    has no support and no weight; an unanswered item is a wrong prediction)."""
    pred, gold = _one_hot(columns)
    hits = (pred * gold).sum(axis=-2)
    predicted, support = pred.sum(axis=-2), gold.sum(axis=-2)
    f1 = np.where(predicted + support > 0, 2 * hits / np.maximum(predicted + support, 1e-12), 0.0)
    return (support * f1).sum(axis=-1) / np.maximum(support.sum(axis=-1), 1e-12)


def _mcc(columns: np.ndarray) -> np.ndarray:
    """Matthews' correlation of the multi-class confusion matrix (Gorodkin's R_K); 0 when a
    margin of the matrix is constant."""
    pred, gold = _one_hot(columns)
    n = columns.shape[-2]
    correct = (pred * gold).sum(axis=(-2, -1))
    predicted, support = pred.sum(axis=-2), gold.sum(axis=-2)
    covariance = correct * n - (predicted * support).sum(axis=-1)
    spread = ((n * n - (predicted ** 2).sum(axis=-1)) * (n * n - (support ** 2).sum(axis=-1)))
    return np.where(spread > 0, covariance / np.sqrt(np.maximum(spread, 1e-300)), 0.0)


CORPUS_STATISTICS = {"weighted_f1": _weighted_f1, "mcc": _mcc}


def _corpus(results: Sequence[ItemResult], metric: str):
    """(per-item columns [n, k], statistic over them) for a corpus-level metric, else None."""
    if not results:
        return None
    first = results[0].metrics
    if f"{metric}.tp" in first:
        keys, statistic = COUNT_KEYS, _micro_f1
    elif f"{metric}.pred" in first and metric in CORPUS_STATISTICS:
        keys, statistic = LABEL_KEYS, CORPUS_STATISTICS[metric]
    else:
        return None
    columns = np.array([[r.metrics[f"{metric}.{k}"] for k in keys] for r in results],
                       dtype=np.float64)
    return columns, statistic


def is_corpus_statistic(results: Sequence[ItemResult], metric: str) -> bool:
    return _corpus(results, metric) is not None


def _bootstrap_statistic(statistic, columns: list[np.ndarray],
                         level: float = 0.95) -> tuple[float, float]:
    """CI of a corpus statistic (one run) or of its paired difference (edited − baseline)."""
    n = columns[0].shape[0]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    index = rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    stats = [statistic(c[index]) for c in columns]
    values = stats[0] if len(stats) == 1 else stats[1] - stats[0]
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def aggregate(results: Sequence[ItemResult], metric: str) -> float:
    """The run's score for ``metric``: its corpus statistic where items carry one, else the
    mean of the per-item values."""
    corpus = _corpus(results, metric)
    if corpus is not None:
        columns, statistic = corpus
        return float(statistic(columns))
    return mean([r.metrics[metric] for r in results])


def aggregate_ci(results: Sequence[ItemResult], metric: str) -> tuple[float, float]:
    """95 % percentile-bootstrap CI of :func:`aggregate`."""
    corpus = _corpus(results, metric)
    if corpus is not None and len(results) > 1:
        return _bootstrap_statistic(corpus[1], [corpus[0]])
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
    ordered_after = [after[i] for i in ids]
    corpus_before, corpus_after = _corpus(baseline, metric), _corpus(ordered_after, metric)
    if corpus_before is not None and corpus_after is not None:
        base_score, edited_score = aggregate(baseline, metric), aggregate(ordered_after, metric)
        delta = edited_score - base_score
        low, high = ((delta, delta) if len(ids) < 2 else _bootstrap_statistic(
            corpus_before[1], [corpus_before[0], corpus_after[0]]))
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
