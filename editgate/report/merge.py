"""One verdict from many shards: merge the run reports of one matrix run in pieces.

A matrix sharded by ``--editors`` (CI matrix jobs, ``docs/ci-example.yml``) leaves one run report
per shard. :func:`merge` combines them into the report the whole matrix would have written: the
union of the cases, gates, edit-success rates, budgets and per-item results, golden checks taken
once, test tallies summed, and the wall time of the slowest shard (shards run side by side).

Shards are refused, with the field that differs, unless they are pieces of *one* run: the same
model (and its weights fingerprint), profile, item limit, precisions, seed, edit source, ability
code and data, tolerances, hyper-parameter overrides and compute environment (kernels, threads,
library versions). Every editor that two shards share must have the same code and
hyper-parameters, and anything both shards decided (a case, a gate, a golden check, the unedited
model's item results) must agree; a case run twice with different scores means the shards were
not one run.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from editgate.report.collect import seconds_per_edit
from editgate.report.schema import (
    Budget,
    Case,
    Environment,
    RunReport,
    Tally,
    Timings,
    to_json,
)

T = TypeVar("T")

# Environment fields every shard must share (what changes a score or a verdict).
SAME_RUN = ("model", "model_fingerprint", "profile", "limit", "dtype", "eval_dtype",
            "generation_dtype", "seed", "edit_source", "tolerances_sha256", "hparam_overrides",
            "compute", "attention_fallback", "libraries")


class MergeError(ValueError):
    """Shard reports that are not pieces of one run (the message names what differs)."""


def merge(shards: Sequence[RunReport], *, run_id: str, sources: Sequence[str] = ()) -> RunReport:
    """The report of the whole matrix from its shards' reports (``sources``: their file names,
    used in messages and recorded as the merged run's command)."""
    if not shards:
        raise MergeError("no shard reports to merge")
    names = list(sources) or [s.run_id for s in shards]
    environment = _merge_environment([s.environment for s in shards], names, sources)
    cases = _union((c for s in shards for c in s.cases), lambda c: c.id, "case", names, shards,
                   lambda s: s.cases, ignore=("edit_seconds", "new_edits", "cached"))
    gates = _union((g for s in shards for g in s.gates), lambda g: g.key, "gate", names, shards,
                   lambda s: s.gates)
    success = _union((x for s in shards for x in s.success), lambda x: x.key, "edit-success rate",
                     names, shards, lambda s: s.success)
    baselines = _union((b for s in shards for b in s.baselines), lambda b: b.ability,
                       "golden check", names, shards, lambda s: s.baselines)
    results: dict[str, dict[str, Any]] = defaultdict(dict)
    for shard, name in zip(shards, names):
        for ability, states in shard.results.items():
            for state, items in states.items():
                known = results[ability].get(state)
                if known is not None and to_json(known) != to_json(items):
                    raise MergeError(f"{name}: the {ability} results of state {state!r} differ "
                                     "from another shard's: the shards were not one run")
                results[ability][state] = items
    merged = RunReport(
        run_id=run_id, created=min(s.created for s in shards),
        finished=max(s.finished for s in shards), environment=environment, cases=cases,
        gates=gates, success=success, baselines=baselines,
        budgets=_budgets(cases, [b for s in shards for b in s.budgets]),
        timings=_merge_timings([s.timings for s in shards], cases),
        tests=Tally(**{f.name: sum(getattr(s.tests, f.name) for s in shards)
                       for f in dataclasses.fields(Tally)}),
        results=dict(results))
    statuses = [s.exit_status for s in shards if s.exit_status is not None]
    merged.exit_status = max([0 if merged.passed else 1, *statuses])
    return merged


def _merge_environment(envs: list[Environment], names: list[str],
                       sources: Sequence[str]) -> Environment:
    first = envs[0]
    for env, name in zip(envs[1:], names[1:]):
        for field_name in SAME_RUN:
            if getattr(env, field_name) != getattr(first, field_name):
                raise MergeError(f"{name}: {field_name} {getattr(env, field_name)!r} differs from "
                                 f"{names[0]}'s {getattr(first, field_name)!r}")
    editors: dict[str, Any] = {}
    abilities: dict[str, Any] = {}
    hparams: dict[str, str] = {}
    for env, name in zip(envs, names):
        for kind, mine, merged in (("editor", env.editors, editors),
                                   ("ability", env.abilities, abilities),
                                   ("hyper-parameters of editor", env.hparams_sha256, hparams)):
            for key, value in mine.items():
                if key in merged and to_json(merged[key]) != to_json(value):
                    raise MergeError(f"{name}: {kind} {key!r} differs from another shard's "
                                     f"({to_json(value)!r} vs {to_json(merged[key])!r})")
                merged[key] = value
    command = ["python", "-m", "editgate.report", "merge", *sources] if sources else first.command
    return dataclasses.replace(
        first, editors=editors, abilities=abilities, hparams_sha256=hparams, command=command,
        xdist_workers=sum(e.xdist_workers for e in envs),
        hostname=",".join(dict.fromkeys(e.hostname for e in envs if e.hostname)))


def _union(records: Iterable[T], key: Callable[[T], str], what: str, names: list[str],
           shards: Sequence[RunReport], of: Callable[[RunReport], list[T]],
           ignore: tuple[str, ...] = ()) -> list[T]:
    """Records of every shard, once each; a record two shards both hold must agree (on every
    field but those in ``ignore``: timings differ between two runs of the same case)."""
    decided = lambda record: {k: v for k, v in to_json(record).items() if k not in ignore}
    merged: dict[str, T] = {}
    for record in records:
        k = key(record)
        if k in merged and decided(merged[k]) != decided(record):
            holders = [n for s, n in zip(shards, names) if any(key(r) == k for r in of(s))]
            raise MergeError(f"{what} {k!r} differs between {' and '.join(holders)}: "
                             "the shards were not one run")
        merged.setdefault(k, record)
    return list(merged.values())


def _budgets(cases: list[Case], budgets: list[Budget]) -> list[Budget]:
    """Each sequential chain's edit budget: a shard's own where one shard ran the chain (a
    searched budget keeps its bracket), else recomputed over the merged cases as the plugin
    computes it."""
    by_chain: dict[tuple[str, str], list[Budget]] = defaultdict(list)
    for budget in budgets:
        by_chain[(budget.editor, budget.regime)].append(budget)
    merged = []
    for (editor, regime), found in sorted(by_chain.items()):
        if len(found) == 1:
            merged.append(found[0])
            continue
        chain = sorted((c for c in cases if (c.editor, c.regime) == (editor, regime)),
                       key=lambda c: c.checkpoint)
        budget = 0
        for case in chain:
            if not case.passed:
                break
            budget = case.checkpoint
        checkpoints = [c.checkpoint for c in chain]
        merged.append(Budget(editor, regime, budget, max(checkpoints), checkpoints))
    return merged


def _merge_timings(timings: list[Timings], cases: list[Case]) -> Timings:
    """Wall time of the slowest shard, test time summed (baselines are scored in every shard);
    the process timers of each shard's own session are not carried over."""
    merged = Timings(session_seconds=max(t.session_seconds for t in timings),
                     tests_seconds=round(sum(t.tests_seconds for t in timings), 3))
    for t in timings:
        for case, seconds in t.by_case.items():
            merged.by_case[case] = round(merged.by_case.get(case, 0.0) + seconds, 3)
        merged.benchmarks.extend(t.benchmarks)
    merged.edit_seconds, merged.seconds_per_edit = seconds_per_edit(cases)
    return merged
