"""What moved between two runs: regressed abilities, shrunk edit budgets, changed environments.

Gates are matched by (case, ability, metric) and compared on their Δ (each run against its own
unedited baseline, so a moved baseline does not pass for a moved edit):

* **regressed** — the gate passed before and fails now, or Δ fell by more than the tolerance
  (``--regression-tolerance``; by default the gate's own tolerance τ);
* **improved** — the reverse;
* **moved** — Δ changed, but within the tolerance (listed in the HTML report only).

When only the environment differs — the kernels or precision (CPU capability, instruction sets,
device, torch version, ``--eval-dtype``), with the same model, data, editor and ability code,
hyper-parameters and tolerances — a verdict that moved is reported as **environment**, not as a
regression or improvement of the editor: bf16 scores differ between CPUs (README,
"Reproducibility"). When the code changed too, the two cannot be told apart and the usual
verdicts stand, with the environment change listed beside them.

Edit-success rates are compared the same way (pass → fail, or a drop beyond the tolerance; by
default 0.1, one probe in ten). An edit budget that shrank is a regression; a case whose edit now
fails is a regression. Cases that appear or disappear, a moved unedited baseline, and environment
changes (commit, editor versions, libraries, model) are reported as information.
"""

from __future__ import annotations

import math
from typing import Any

from editgate.report.schema import Change, Comparison, Environment, RunReport

SUCCESS_TOLERANCE = 0.1
EPSILON = 1e-9


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _verdict(before_ok: bool, after_ok: bool, change: float, tolerance: float) -> str | None:
    if before_ok and not after_ok:
        return "regressed"
    if not before_ok and after_ok:
        return "improved"
    if not _finite(change):
        return "regressed" if after_ok is False else None
    if change < -tolerance - EPSILON:
        return "regressed"
    if change > tolerance + EPSILON:
        return "improved"
    if abs(change) > EPSILON:
        return "moved"
    return None


def compare(current: RunReport, base: RunReport, tolerance: float | None = None) -> Comparison:
    """Compare ``current`` with the earlier run ``base``."""
    rule = (f"Δ drop > {tolerance:g}" if tolerance is not None else "Δ drop > the gate's tolerance")
    rule += (f"; success-rate drop > {tolerance if tolerance is not None else SUCCESS_TOLERANCE:g}"
             "; pass → fail; budget shrank; edit now fails")
    result = Comparison(base_run=base.run_id, base_created=base.created,
                        base_commit=base.environment.git_commit, rule=rule)
    result.environment_changed = kernel_changes(base.environment, current.environment)
    result.environment_only = bool(result.environment_changed) and not inputs_changed(
        base.environment, current.environment)
    changes, unchanged = result.changes, 0

    old_cases = {c.id: c for c in base.cases}
    new_cases = {c.id: c for c in current.cases}
    for case_id in new_cases.keys() - old_cases.keys():
        changes.append(Change("case", case_id, "added", note="not in the earlier run"))
    for case_id in old_cases.keys() - new_cases.keys():
        changes.append(Change("case", case_id, "removed", note="not in this run"))
    for case_id in new_cases.keys() & old_cases.keys():
        before, after = old_cases[case_id].error, new_cases[case_id].error
        if before is None and after is not None:
            changes.append(Change("case", case_id, "regressed", "edit ok", "edit failed",
                                  note=after))
        elif before is not None and after is None:
            changes.append(Change("case", case_id, "improved", "edit failed", "edit ok"))

    old_gates = {g.key: g for g in base.gates}
    for gate in current.gates:
        old = old_gates.pop(gate.key, None)
        if old is None:
            if gate.case in old_cases and old_cases[gate.case].error is None:
                changes.append(Change("gate", gate.key, "added", after=gate.delta))
            continue
        tol = tolerance if tolerance is not None else gate.tolerance
        change = gate.delta - old.delta
        verdict = _verdict(old.passed, gate.passed, change, tol)
        if verdict is None:
            unchanged += 1
            continue
        note = (f"edited {old.edited:.4f} → {gate.edited:.4f}; tolerance {tol:g}"
                + ("" if gate.passed else "; gate fails"))
        if result.environment_only and verdict in ("regressed", "improved"):
            verdict, note = "environment", f"{verdict} with the kernels alone; {note}"
        changes.append(Change("gate", gate.key, verdict, old.delta, gate.delta, change,
                              note=note))
    for key, old in old_gates.items():
        if old.case in new_cases and new_cases[old.case].error is None:  # else: the case regressed
            changes.append(Change("gate", key, "removed", before=old.delta))

    old_success = {s.key: s for s in base.success}
    for rate in current.success:
        old_rate = old_success.get(rate.key)
        if old_rate is None:
            continue
        tol = tolerance if tolerance is not None else SUCCESS_TOLERANCE
        change = rate.rate - old_rate.rate
        verdict = _verdict(old_rate.passed, rate.passed, change, tol)
        if verdict is None:
            unchanged += 1
            continue
        note = f"threshold {rate.threshold:g}, {rate.probes} probes"
        if result.environment_only and verdict in ("regressed", "improved"):
            verdict, note = "environment", f"{verdict} with the kernels alone; {note}"
        changes.append(Change("success", rate.key, verdict, old_rate.rate, rate.rate, change,
                              note=note))

    old_budgets = {b.key: b for b in base.budgets}
    for budget in current.budgets:
        old_budget = old_budgets.get(budget.key)
        if old_budget is None:
            continue
        if budget.budget == old_budget.budget:
            unchanged += 1
            continue
        verdict = "regressed" if budget.budget < old_budget.budget else "improved"
        if result.environment_only:
            verdict = "environment"
        note = ("" if budget.checkpoints == old_budget.checkpoints
                else f"checkpoints {old_budget.checkpoints} → {budget.checkpoints}")
        changes.append(Change("budget", budget.key, verdict, old_budget.text, budget.text,
                              float(budget.budget - old_budget.budget), note=note))

    changes.extend(_baseline_changes(current, base))
    changes.extend(_environment_changes(current, base))
    changes.extend(_timing_changes(current, base))
    result.unchanged = unchanged
    order = {"regressed": 0, "improved": 1, "environment": 2, "moved": 3, "added": 4, "removed": 5,
             "changed": 6}
    changes.sort(key=lambda c: (order.get(c.verdict, 9), c.kind, c.key))
    return result


def _baseline_changes(current: RunReport, base: RunReport) -> list[Change]:
    """The unedited model's scores moved: not a regression of an editor, but worth knowing."""
    def scores(report: RunReport) -> dict[str, float]:
        return {f"{g.ability}.{g.metric}": g.baseline for g in report.gates}

    before, after = scores(base), scores(current)
    return [Change("baseline", key, "changed", before[key], value, value - before[key],
                   note="the unedited model scores differently (data, prompts, runner, model?)")
            for key, value in after.items()
            if key in before and _finite(value) and _finite(before[key])
            and abs(value - before[key]) > EPSILON]


def kernel_changes(old: Environment, new: Environment) -> list[str]:
    """What selects the kernels or the precision and differs between two runs, e.g.
    ``["cpu_capability AVX512 → AVX2"]``: scores may move with it (bf16 far more than float32)."""
    pairs = {"eval_dtype": (old.eval_dtype, new.eval_dtype),
             "generation_dtype": (old.generation_dtype, new.generation_dtype),
             "attention_fallback": (old.attention_fallback, new.attention_fallback)}
    if old.compute and new.compute:  # runs written before the field existed compare nothing
        for key in sorted(set(old.compute) | set(new.compute)):
            pairs[key] = (old.compute.get(key), new.compute.get(key))
    return [f"{key} {before} → {after}" for key, (before, after) in pairs.items()
            if before != after]


def inputs_changed(old: Environment, new: Environment) -> bool:
    """Whether anything besides the kernels differs that could move a score or a verdict: the
    model, data, editor and ability code, hyper-parameters, tolerances, profile or settings."""
    def code(infos: dict) -> dict[str, Any]:
        return {name: (info.code, info.version) for name, info in infos.items()}

    def inputs(env: Environment) -> tuple:
        return (env.model_fingerprint, env.profile, env.limit, env.seed, env.edit_source,
                env.dtype, env.tolerances_sha256, env.hparams_sha256, env.hparam_overrides)

    shared_editors = set(old.editors) & set(new.editors)
    shared_abilities = set(old.abilities) & set(new.abilities)
    return (inputs(old) != inputs(new)
            or code({n: old.editors[n] for n in shared_editors})
            != code({n: new.editors[n] for n in shared_editors})
            or code({n: old.abilities[n] for n in shared_abilities})
            != code({n: new.abilities[n] for n in shared_abilities})
            or any(info.code is None for info in [*old.editors.values(), *new.editors.values(),
                                                  *old.abilities.values(),
                                                  *new.abilities.values()]))


def _environment_changes(current: RunReport, base: RunReport) -> list[Change]:
    old, new = base.environment, current.environment
    pairs: dict[str, tuple[Any, Any]] = {
        "git commit": (old.git_commit, new.git_commit),
        "model fingerprint": (old.model_fingerprint, new.model_fingerprint),
        "tolerances": (old.tolerances_sha256, new.tolerances_sha256),
        "device": (old.device, new.device),
    }
    for name in sorted(set(old.editors) & set(new.editors)):
        a, b = old.editors[name], new.editors[name]
        pairs[f"editor {name} version"] = (a.version, b.version)
        pairs[f"editor {name} source"] = (a.source_sha256, b.source_sha256)
    for name in sorted(set(old.libraries) | set(new.libraries)):
        pairs[f"library {name}"] = (old.libraries.get(name), new.libraries.get(name))
    for name in sorted(set(old.hparams_sha256) | set(new.hparams_sha256)):
        pairs[f"hparams {name}"] = (old.hparams_sha256.get(name), new.hparams_sha256.get(name))
    if old.hparam_overrides != new.hparam_overrides:
        pairs["--hparam overrides"] = (str(old.hparam_overrides), str(new.hparam_overrides))
    if old.compute and new.compute:
        for key in sorted(set(old.compute) | set(new.compute)):
            pairs[f"kernels {key}"] = (old.compute.get(key), new.compute.get(key))
    pairs["eval precision"] = (old.eval_dtype, new.eval_dtype)
    pairs["generation precision"] = (old.generation_dtype, new.generation_dtype)
    pairs["attention fallback"] = (old.attention_fallback, new.attention_fallback)
    changes = []
    for key, (before, after) in pairs.items():
        if before != after and not (before is None and after is None):
            short = lambda v: v[:12] if isinstance(v, str) and len(v) >= 40 else v
            changes.append(Change("environment", key, "changed", short(before), short(after)))
    return changes


def _timing_changes(current: RunReport, base: RunReport) -> list[Change]:
    changes = []
    for editor, seconds in current.timings.seconds_per_edit.items():
        old = base.timings.seconds_per_edit.get(editor)
        if seconds is None or old is None or not old:
            continue
        ratio = seconds / old
        if ratio > 1.5 or ratio < 1 / 1.5:
            changes.append(Change("timing", f"{editor} s/edit", "changed", round(old, 3),
                                  round(seconds, 3), seconds - old, note=f"×{ratio:.2f}"))
    return changes
