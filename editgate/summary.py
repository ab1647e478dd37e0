"""The end-of-run terminal summary: one row per edited case, one column per ability.

Each ability column's header holds the unedited baseline of its first (paper) metric; each cell the
edited score and its Δ, green when every gate of that ability passed for the case, red with ✗ when
one failed. Then the edit-success rates, seconds per edit, the edit budgets and one line per failed
gate — short enough for ``-k memit`` to fit on one screen. A matrix too large for either
orientation becomes a verdict grid (cases grouped by editor, one ✓/✗ per ability) that never
outgrows the console. The same renderer shows a stored run (``python -m editgate.report show``)
and the comparison with an earlier run (``--compare-to``).
"""

from __future__ import annotations

import math
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from editgate.report.schema import Case, Comparison, RunReport

MAX_FAILURE_LINES = 8
MAX_CHANGE_LINES = 15
SUCCESS_LABELS = {"efficacy": "effic.", "paraphrase": "parap.", "neighborhood": "neigh."}


def _console(out: IO[str], width: int, color: bool) -> Console:
    # Logs (CI) are not width-limited: let the table take the room it needs there.
    return Console(file=out, width=width if color else max(width, 200), force_terminal=color,
                   no_color=not color, highlight=False, soft_wrap=False)


def _seconds(value: float | None) -> str:
    return "cached" if value is None else f"{value:.1f}"


def _ability_cell(report: RunReport, case: Case, ability: str, primary: str, full: bool) -> str:
    """Edited score and Δ of the ability's primary metric; red ✗ when any of its gates failed."""
    gates = [g for g in report.gates if g.case == case.id and g.ability == ability]
    if case.error:
        return "[red]edit failed[/]"
    if not gates:
        return "[dim]—[/]"
    shown = next((g for g in gates if g.metric == primary), gates[0])
    edited, delta = round(shown.edited, 3) + 0.0, round(shown.delta, 3) + 0.0  # no "-0.000"
    text = f"{edited:.3f} {delta:+.3f}" if full else f"{delta:+.3f}"
    return f"[green]{text}  [/]" if all(g.passed for g in gates) else f"[bold red]{text} ✗[/]"


def _success_cell(report: RunReport, case: Case, metric: str) -> str:
    rate = next((s for s in report.success if s.case == case.id and s.metric == metric), None)
    if rate is None:
        return "[dim]—[/]"
    return f"[green]{rate.rate:.2f}[/]" if rate.passed else f"[bold red]{rate.rate:.2f}✗[/]"


def _seconds_cell(case: Case) -> str:
    if case.error:
        return "[red]—[/]"
    return "[dim]cached[/]" if case.seconds_per_edit is None else f"{case.seconds_per_edit:.1f}"


def render_run(report: RunReport, out: IO[str], *, width: int = 120, color: bool = True) -> None:
    """The summary table, then budgets, seconds per edit and one line per failure.

    Cases are rows and abilities columns while that fits the terminal; with many abilities (the
    paper's eight and more) the table turns: abilities are rows and cases columns, so one editor's
    run (``-k memit``) still reads without scrolling. Cells show the edited score and Δ, or only Δ
    when even that is too wide.
    """
    console = _console(out, width, color)
    env = report.environment
    pairs = report.ability_metrics()
    abilities = report.abilities()
    primary = {a: next(m for ab, m in pairs if ab == a) for a in abilities}
    baseline = {a: next((g.baseline for g in report.gates if (g.ability, g.metric) == (a, primary[a])),
                        None) for a in abilities}
    success_metrics = report.success_metrics()
    limit = f" · {env.limit} items/ability" if env.limit else ""
    title = f"editgate · ability retention after editing · {env.model} · {env.profile}{limit}"

    case_width = max([len(c.id) for c in report.cases] + [9])
    extra = 9 * (len(success_metrics) + 1) + 1  # success-rate and s/edit columns
    wide = case_width + 3 + extra + sum(max(len(a), len(primary[a]) + 6) + 3 for a in abilities)
    label_width = max([len(f"{a} · {primary[a]}") for a in abilities] + [14])
    tall = label_width + 12 + sum(max(len(c.regime) + 5, len(c.editor)) + 3 for c in report.cases)
    if wide > console.width and tall > console.width:  # neither way fits: a verdict grid
        _render_grid(report, console, title)
        _render_details(report, console)
        return
    if wide + 14 * len(abilities) <= console.width or (wide <= console.width and wide <= tall):
        full = wide + 3 * len(abilities) <= console.width  # room for "0.850 -0.012 ✗" cells
        table = Table()
        table.add_column("edit case", no_wrap=True, style="bold")
        for ability in abilities:
            base = f"{baseline[ability]:.3f}" if baseline[ability] is not None else ""
            table.add_column(f"{ability}\n[dim]{primary[ability]} {base}[/]", justify="right",
                             no_wrap=True)
        for metric in success_metrics:
            table.add_column(SUCCESS_LABELS.get(metric, metric[:6]), justify="right", no_wrap=True)
        table.add_column("s/edit", justify="right", no_wrap=True)
        for case in report.cases:
            table.add_row(case.id, *[_ability_cell(report, case, a, primary[a], full) for a in abilities],
                          *[_success_cell(report, case, m) for m in success_metrics], _seconds_cell(case))
        legend = "header: unedited baseline · cells: edited score and Δ" if full else \
            "header: unedited baseline · cells: Δ"
    else:
        full = tall + 6 * len(report.cases) <= console.width
        table = Table()
        table.add_column("ability · metric", no_wrap=True, style="bold")
        table.add_column("baseline", justify="right", no_wrap=True, style="dim")
        for case in report.cases:
            suffix = f"@{case.checkpoint}" if case.id.endswith(f"@{case.checkpoint}") else ""
            table.add_column(f"{case.editor}\n{case.regime}{suffix}", justify="right", no_wrap=True)
        for ability in abilities:
            base = f"{baseline[ability]:.3f}" if baseline[ability] is not None else ""
            table.add_row(f"{ability} · {primary[ability]}", base,
                          *[_ability_cell(report, c, ability, primary[ability], full)
                            for c in report.cases])
        table.add_section()
        for metric in success_metrics:
            table.add_row(metric, "", *[_success_cell(report, c, metric) for c in report.cases])
        table.add_row("s/edit", "", *[_seconds_cell(c) for c in report.cases])
        legend = "cells: edited score and Δ vs the baseline" if full else "cells: Δ vs the baseline"
    # Title and legend are lines of their own: as table title/caption they would wrap to its width.
    console.print(f"[bold]{title}[/]", soft_wrap=True)
    console.print(table)
    console.print(f"[dim]{legend} · ✗ a gate of the ability failed (listed below)[/]", soft_wrap=True)
    _render_details(report, console)


def _render_details(report: RunReport, console: Console) -> None:
    """Below the table: glue-eval scores, notes, budgets, seconds per edit, every failure."""
    env = report.environment
    _glue_eval_table(report, console)
    for name, info in env.abilities.items():
        if info.note:
            console.print(f"[yellow]note[/] {name}: {info.note}", soft_wrap=True)

    if report.budgets:
        text = " · ".join(f"{b.editor} {b.regime} [bold]{b.text}[/]" for b in report.budgets)
        console.print(f"[bold]edit budget[/] (edits before an ability gate fails): {text}")
    if report.timings.seconds_per_edit:
        text = " · ".join(f"{editor} {_seconds(s)}" for editor, s
                          in report.timings.seconds_per_edit.items())
        console.print(f"[bold]seconds per edit[/]: {text}")
    # One line per case with failed gates: which metrics, by how much, against which tolerance.
    failed: dict[str, list[str]] = {}
    for gate in report.gates:
        if not gate.passed:
            failed.setdefault(gate.case, []).append(
                f"{gate.ability}.{gate.metric} {gate.delta:+.3f} (τ {gate.tolerance:g})")
    for case_id, parts in list(failed.items())[:MAX_FAILURE_LINES]:
        more = f", … {len(parts) - 4} more" if len(parts) > 4 else ""
        console.print(f"[bold red]✗ {case_id}[/]: {', '.join(parts[:4])}{more}")
    if len(failed) > MAX_FAILURE_LINES:
        console.print(f"[red]… and {len(failed) - MAX_FAILURE_LINES} more cases with failed gates "
                      "(see the HTML report)[/]")
    # One line per case whose edits did not take: its rates below threshold.
    missed: dict[str, list[str]] = {}
    for rate in report.success:
        if not rate.passed:
            missed.setdefault(rate.case, []).append(
                f"{rate.metric} {rate.rate:.2f} < {rate.threshold:g} ({rate.probes} probes)")
    for case_id, parts in list(missed.items())[:MAX_FAILURE_LINES]:
        console.print(f"[bold red]✗ {case_id}[/] edit success: {', '.join(parts)}")
    if len(missed) > MAX_FAILURE_LINES:
        console.print(f"[red]… and {len(missed) - MAX_FAILURE_LINES} more cases whose edits did "
                      "not take (see the HTML report)[/]")
    for case in report.cases:
        if case.error:
            console.print(f"[bold red]edit failed[/] {case.id}: {case.error}")
    bad = [b.ability for b in report.baselines if not b.passed]
    if bad:
        console.print(f"[bold red]golden baseline mismatch[/]: {', '.join(bad)}")


def abbreviations(names: list[str], size: int = 3) -> dict[str, str]:
    """Distinct labels of ``size`` characters: ``closed_qa`` → ``cqa``, ``sentiment`` → ``sen``
    (initials of the leading words, then the last word's start; a digit where two collide)."""
    labels: dict[str, str] = {}
    for name in names:
        *words, last = name.split("_")
        head = "".join(w[0] for w in words)[: size - 1]
        label = (head + last)[:size]
        n = 1
        while label in labels.values():
            label = label[: size - len(str(n))] + str(n)
            n += 1
        labels[name] = label
    return labels


def _verdict(report: RunReport, case: Case, ability: str) -> str:
    gates = [g for g in report.gates if g.case == case.id and g.ability == ability]
    if case.error:
        return "[red]E[/]"
    if not gates:
        return "[dim]·[/]"
    return "[green]✓[/]" if all(g.passed for g in gates) else "[bold red]✗[/]"


def _render_grid(report: RunReport, console: Console, title: str) -> None:
    """One verdict per (case, ability), cases grouped by editor with the most failed gates first,
    in as many tables as the abilities need at the console's width; the numbers are in the
    failure lines below, the HTML and the JSON."""
    abilities = report.abilities()
    labels = abbreviations(abilities)
    failed = {c.id: sum(not g.passed for g in report.gates if g.case == c.id) for c in report.cases}
    by_editor: dict[str, list[Case]] = {}
    for case in report.cases:
        by_editor.setdefault(case.editor, []).append(case)
    editors = sorted(by_editor, key=lambda e: -sum(failed[c.id] + bool(c.error)
                                                   for c in by_editor[e]))
    # No box: each column takes its width and a space either side.
    case_width = max(len(f" {_case_label(c)}") for c in report.cases)
    fixed = (case_width + 2) + (4 + 2) + (4 + 2)  # the case, failed-gate and edit-success columns
    per_table = max(1, (console.width - fixed) // (3 + 2))
    console.print(f"[bold]{title}[/]")
    for start in range(0, len(abilities), per_table):
        chunk = abilities[start:start + per_table]
        table = Table(box=None, padding=(0, 1), show_edge=False)
        table.add_column("edit case", no_wrap=True)
        for ability in chunk:
            table.add_column(labels[ability], justify="center", no_wrap=True, min_width=3)
        table.add_column("fail", justify="right", no_wrap=True)
        table.add_column("took", justify="right", no_wrap=True)
        for editor in editors:
            table.add_row(f"[bold]{editor}[/]", *[""] * (len(chunk) + 2))
            for case in by_editor[editor]:
                rates = [r for r in report.success if r.case == case.id]
                took = sum(r.passed for r in rates)
                took_cell = (f"{took}/{len(rates)}" if rates else "—")
                if rates and took < len(rates):
                    took_cell = f"[red]{took_cell}[/]"
                table.add_row(f" {_case_label(case)}",
                              *[_verdict(report, case, a) for a in chunk],
                              f"[red]{failed[case.id]}[/]" if failed[case.id] else "0", took_cell)
        console.print(table)
    key = " · ".join(f"{labels[a]} {a}" for a in abilities)
    console.print(f"[dim]✓ every gate of the ability passed · ✗ one failed (listed below) · "
                  f"E the edit failed · fail: failed gates · took: edit-success rates above "
                  f"threshold · {key}[/]", soft_wrap=False)


def _case_label(case: Case) -> str:
    """The case id without its editor (the grid's group row names it)."""
    return case.id.removeprefix(f"{case.editor}-")


def render_comparison(comparison: Comparison, out: IO[str], *, width: int = 120,
                      color: bool = True, fail: bool = False) -> None:
    """What moved since ``comparison.base_run``: regressions first, then improvements and news."""
    console = _console(out, width, color)
    commit = f" @ {comparison.base_commit[:10]}" if comparison.base_commit else ""
    head = f"[bold]compared with run {comparison.base_run}[/] ({comparison.base_created}{commit})"
    shown = [c for c in comparison.changes if c.verdict != "moved"]
    moved = len(comparison.changes) - len(shown)
    if not comparison.regressions and not comparison.improvements and not shown:
        console.print(f"{head}: [green]no change[/] ({comparison.unchanged} gates, rates and "
                      f"budgets identical{f', {moved} moved within tolerance' if moved else ''})")
        return
    regressed = len(comparison.regressions)
    verdict = (f"[bold red]{regressed} regression{'s' * (regressed != 1)}[/]" if regressed
               else "[green]no regression[/]")
    by_kernels = sum(c.verdict == "environment" for c in comparison.changes)
    console.print(f"{head}: {verdict}, {len(comparison.improvements)} improved, "
                  + (f"{by_kernels} moved with the environment, " if by_kernels else "")
                  + f"{moved} moved within tolerance, {comparison.unchanged} identical")
    if comparison.environment_changed:
        cause = ("only the environment differs: verdicts that moved are marked 'environment'"
                 if comparison.environment_only else
                 "the code or inputs changed too: moved verdicts may owe to either")
        console.print(f"  [yellow]environment changed[/] ({'; '.join(comparison.environment_changed)})"
                      f" — {cause}", overflow="fold")
    style = {"regressed": "bold red", "improved": "green", "environment": "yellow"}
    for change in shown[:MAX_CHANGE_LINES]:
        values = ""
        if change.before is not None or change.after is not None:
            values = f" {_fmt(change.before)} → {_fmt(change.after)}"
        note = f"  [dim]{change.note}[/]" if change.note else ""
        console.print(f"  [{style.get(change.verdict, 'yellow')}]{change.verdict:9}[/] "
                      f"{change.kind} {change.key}{values}{note}", overflow="fold")
    if len(shown) > MAX_CHANGE_LINES:
        console.print(f"  … and {len(shown) - MAX_CHANGE_LINES} more (see the HTML report)")
    if regressed and fail:
        console.print("[bold red]--fail-on-regression: the session fails[/]")


def _glue_eval_table(report: RunReport, console: Console) -> None:
    """The glue_eval tasks as the papers tabulate them: weighted F1 / MCC per task, the unedited
    model first, then every edited state."""
    tasks = [a for a, m in report.ability_metrics() if m == "weighted_f1"]
    golden = {b.ability: b.summary.get("metrics", {}) for b in report.baselines
              if "weighted_f1" in b.summary.get("metrics", {})}
    if not tasks and golden:  # a baseline-only run: the golden (float32) scores
        table = Table(title="glue_eval · weighted F1 / MCC / answered (unedited, float32)",
                      title_justify="left")
        for task in golden:
            table.add_column(task.removeprefix("glue_"), justify="right", no_wrap=True)
        table.add_row(*[f"{m['weighted_f1']['mean']:.3f} / {m['mcc']['mean']:+.2f} / "
                        f"{m['answered']['mean']:.2f}" for m in golden.values()])
        console.print(table)
        return
    if not tasks:
        return
    gates = {(g.case, g.ability, g.metric): g for g in report.gates}
    table = Table(title="glue_eval · weighted F1 / MCC", title_justify="left")
    table.add_column("state", no_wrap=True, style="bold")
    table.add_column("edits", justify="right")
    for task in tasks:
        table.add_column(task.removeprefix("glue_"), justify="right", no_wrap=True)

    def cell(case: str, task: str, edited: bool) -> str:
        f1, mcc = gates.get((case, task, "weighted_f1")), gates.get((case, task, "mcc"))
        if f1 is None:
            return "—"
        value = lambda g: (g.edited if edited else g.baseline) if g else math.nan
        text = f"{value(f1):.3f} / {value(mcc):+.2f}"
        failed = edited and not all(g.passed for g in (f1, mcc) if g)
        return f"[bold red]{text} ✗[/]" if failed else text

    first = report.cases[0].id if report.cases else None
    if first is not None:
        table.add_row("unedited", "0", *[cell(first, t, edited=False) for t in tasks])
    for case in report.cases:
        table.add_row(case.id, str(case.checkpoint), *[cell(case.id, t, edited=True) for t in tasks])
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:+.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "—" if value is None else str(value)
