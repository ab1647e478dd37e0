"""Outcome records (what the gate tests attached to their reports) → a :class:`RunReport`.

Records are the JSON-able dicts built by ``editgate.fixtures.Recorder`` (kinds ``gate``,
``success``, ``baseline``, ``edit``). Gate records name the per-item result files of the results
cache; they are read here, so the report holds every per-item result and can show the worst
items of every gate.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from editgate.outcomes import RunOutcomes
from editgate.report.schema import (
    Baseline,
    Budget,
    Case,
    Environment,
    Gate,
    ItemRecord,
    RunReport,
    Success,
    Tally,
    Timings,
    WorstItem,
)

WORST_ITEMS = 10
BASE_STATE = "base"


def wilson_interval(rate: float, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion (sensible for small n and rates of 0 or 1)."""
    if n <= 0 or not math.isfinite(rate):
        return None
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def read_results(path: str | Path) -> list[ItemRecord] | None:
    """Per-item results from a results-cache file (``{"version": 1, "value": [...]}``)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        values = payload["value"] if isinstance(payload, dict) else payload
        return [ItemRecord(str(r["id"]), str(r["prediction"]), str(r["gold"]),
                           {k: float(v) for k, v in r["metrics"].items()}) for r in values]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mean_ci(values: list[float]) -> list[float] | None:
    from editgate.gate import bootstrap_ci

    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    low, high = bootstrap_ci(finite)
    return [low, high]


def worst_items(metric: str, before: list[ItemRecord], after: list[ItemRecord],
                count: int = WORST_ITEMS) -> list[WorstItem]:
    """The ``count`` items whose ``metric`` dropped most (only items that dropped)."""
    edited = {r.id: r for r in after}
    pairs = []
    for base in before:
        new = edited.get(base.id)
        if new is None or metric not in base.metrics or metric not in new.metrics:
            continue
        drop = new.metrics[metric] - base.metrics[metric]
        if drop < 0 or not math.isfinite(drop):
            pairs.append((drop if math.isfinite(drop) else -math.inf, base, new))
    pairs.sort(key=lambda p: p[0])
    return [WorstItem(b.id, b.metrics[metric], a.metrics[metric], b.prediction, a.prediction, b.gold)
            for _, b, a in pairs[:count]]


def _chain_new_edits(cases: list[Case]) -> None:
    """Edits each case added to its chain: a sequential chain's checkpoints share their prefix."""
    chains: dict[tuple[str, str], list[Case]] = defaultdict(list)
    for case in cases:
        chains[(case.editor, case.regime)].append(case)
    for chain in chains.values():
        previous = 0
        for case in sorted(chain, key=lambda c: c.checkpoint):
            case.new_edits = max(case.checkpoint - previous, 0)
            previous = case.checkpoint


def seconds_per_edit(cases: Iterable[Case]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Per editor: total editor seconds, and seconds per edit over the cases it computed (None when
    every delta came from the cache)."""
    seconds: dict[str, float] = defaultdict(float)
    edits: dict[str, int] = defaultdict(int)
    editors: list[str] = []
    for case in cases:
        editors.append(case.editor)
        if case.seconds_per_edit is not None:
            seconds[case.editor] += case.edit_seconds
            edits[case.editor] += case.new_edits
    per_edit = {e: (seconds[e] / edits[e] if edits[e] else None) for e in dict.fromkeys(editors)}
    return {e: round(seconds[e], 3) for e in dict.fromkeys(editors)}, per_edit


def build_report(records: Iterable[Mapping[str, Any]], environment: Environment, *, run_id: str,
                 created: str, timings: Timings | None = None, tests: Tally | None = None,
                 read_items: bool = True) -> RunReport:
    """Assemble the report of a run from its outcome records."""
    records = list(records)
    outcomes = RunOutcomes()
    for record in records:
        outcomes.add(dict(record))

    cases = [Case(id=c.id, editor=c.editor, regime=c.regime, checkpoint=c.checkpoint,
                  edit_seconds=float(c.edit_seconds), cached=c.error is None and not c.edit_seconds,
                  error=c.error, state_key=c.state_key, passed=outcomes.case_passed(c.id))
             for c in outcomes.cases.values()]
    _chain_new_edits(cases)
    state_of = {c.id: c.state_key for c in cases}

    results: dict[str, dict[str, list[ItemRecord]]] = defaultdict(dict)
    gates: list[Gate] = []
    for record in records:
        if record["kind"] != "gate":
            continue
        r = record["result"]
        case_id, ability, metric = record["case"]["id"], record["ability"], record["metric"]
        if read_items:
            for state, path in ((BASE_STATE, record.get("baseline_results")),
                                (state_of.get(case_id, ""), record.get("edited_results"))):
                if path and state not in results[ability]:
                    items = read_results(path)
                    if items is not None:
                        results[ability][state] = items
        before = results.get(ability, {}).get(BASE_STATE)
        after = results.get(ability, {}).get(state_of.get(case_id, ""))
        gate = Gate(case=case_id, ability=ability, metric=metric, n_items=int(r["n_items"]),
                    baseline=float(r["baseline"]), edited=float(r["edited"]),
                    delta=float(r["delta"]), ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"]),
                    tolerance=float(r["tolerance"]), passed=bool(r["passed"]),
                    worst=[WorstItem(**w) for w in r.get("worst", ())])
        if before is not None and after is not None:
            gate.baseline_results, gate.edited_results = BASE_STATE, state_of[case_id]
            gate.baseline_ci = _mean_ci([i.metrics.get(metric, math.nan) for i in before])
            gate.edited_ci = _mean_ci([i.metrics.get(metric, math.nan) for i in after])
            gate.worst = worst_items(metric, before, after) or gate.worst
        gates.append(gate)

    success = []
    for (case_id, metric), record in outcomes.success.items():
        interval = wilson_interval(float(record["rate"]), int(record["probes"]))
        success.append(Success(case=case_id, metric=metric, rate=float(record["rate"]),
                               threshold=float(record["threshold"]), passed=bool(record["passed"]),
                               probes=int(record["probes"]), failed=list(record.get("failed", [])),
                               ci_low=interval[0] if interval else None,
                               ci_high=interval[1] if interval else None))
    baselines = [Baseline(ability=a, passed=bool(r["passed"]), problems=list(r.get("problems", [])),
                          summary=dict(r.get("summary") or {}))
                 for a, r in outcomes.baselines.items()]

    chains: dict[tuple[str, str], list[int]] = defaultdict(list)
    for case in cases:
        chains[(case.editor, case.regime)].append(case.checkpoint)
    budgets = [Budget(editor, regime, budget, max(chains[(editor, regime)]),
                      sorted(chains[(editor, regime)]))
               for (editor, regime), budget in outcomes.edit_budgets().items()]
    for budget in budgets:  # a searched chain: the search's own bracket, over its whole length
        search = outcomes.searches.get((budget.editor, budget.regime))
        if search is not None:
            budget.budget, budget.first_failure = search["budget"], search["first_failure"]
            budget.max_checkpoint, budget.step = search["total"], search["step"]

    timings = timings or Timings()
    timings.edit_seconds, timings.seconds_per_edit = seconds_per_edit(cases)
    return RunReport(run_id=run_id, created=created, environment=environment, cases=cases,
                     gates=gates, success=success, baselines=baselines, budgets=budgets,
                     timings=timings, tests=tests or Tally(), results=dict(results))
