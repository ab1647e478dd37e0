"""The HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched).

Sections, top to bottom: the verdict; what moved since the compared run; the editor × ability heat
map of Δ; ability score vs number of sequential edits per editor (the paper's figures); edit success
vs ability retention (the paper's trade-off); the gate tables with drill-down to the worst items;
edit success; edit budgets and timings; the environment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from html import escape

from editgate.report import svg
from editgate.report.schema import Case, Gate, MetricInfo, RunReport

MAX_TEXT = 160


def _e(value: object) -> str:
    return escape(str(value))


def _short(text: str, limit: int = MAX_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    value = round(value, digits) + 0.0  # no "-0.000"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _ci(values: list[float] | tuple[float, float] | None, digits: int = 3, sign: bool = False) -> str:
    if not values:
        return ""
    low, high = values
    return f'<span class="ci">[{_num(low, digits, sign)}, {_num(high, digits, sign)}]</span>'


def _badge(passed: bool, text: str | None = None) -> str:
    return (f'<span class="badge {"pass" if passed else "fail"}">'
            f'{_e(text or ("pass" if passed else "FAIL"))}</span>')


def editor_colors(report: RunReport) -> dict[str, str]:
    return {editor: svg.color(i) for i, editor in enumerate(report.editors())}


# ------------------------------------------------------------------------- derived numbers


def retention(report: RunReport, case_id: str) -> float | None:
    """Mean over abilities of the primary metric's retention: (edited − chance) / (baseline − chance),
    1 = intact, 0 = down to chance (chance 0 for fractions without one). Likelihood metrics in
    nats have no such scale and are left out; None when no ability qualifies."""
    values = []
    for ability in report.abilities():
        gates = [g for g in report.gates if g.case == case_id and g.ability == ability]
        if not gates:
            continue
        gate = gates[0]
        info = report.metric_info(ability, gate.metric)
        if info.unit not in ("", "fraction"):
            continue
        chance = info.chance or 0.0
        if gate.baseline - chance > 1e-6 and math.isfinite(gate.edited):
            values.append((gate.edited - chance) / (gate.baseline - chance))
    return sum(values) / len(values) if values else None


def edit_score(report: RunReport, case_id: str) -> float | None:
    """Harmonic mean of the case's edit-success rates (CounterFact's "score"): high only when the
    edit took, generalised to paraphrases and left neighbours alone."""
    rates = [s.rate for s in report.success if s.case == case_id and math.isfinite(s.rate)]
    if not rates:
        return None
    if min(rates) <= 0:
        return 0.0
    return len(rates) / sum(1 / r for r in rates)


# ------------------------------------------------------------------------- charts


def heatmap_svg(report: RunReport) -> str:
    """Cases × (ability, metric) — turned to (ability, metric) × cases when there are many more
    metrics than cases, so the grid stays readable at page width instead of being shrunk."""
    pairs = [f"{a} · {m}" for a, m in report.ability_metrics()]
    cases = [c.id for c in report.cases]
    turn = len(pairs) > 10 and len(pairs) > 1.5 * len(cases)
    cells: dict[tuple[str, str], svg.Cell] = {}

    def put(case: str, pair: str, cell: svg.Cell) -> None:
        cells[(pair, case) if turn else (case, pair)] = cell

    for gate in report.gates:
        scale = 2 * gate.tolerance if gate.tolerance > 0 else max(abs(gate.baseline), 1e-9)
        value = gate.delta / scale if math.isfinite(gate.delta) else -1.0
        tooltip = (f"{gate.case} · {gate.ability}.{gate.metric}\nbaseline {_num(gate.baseline, 4)} → "
                   f"edited {_num(gate.edited, 4)}\nΔ {_num(gate.delta, 4, True)} 95% CI "
                   f"[{_num(gate.ci_low, 4, True)}, {_num(gate.ci_high, 4, True)}]\n"
                   f"tolerance −{gate.tolerance:g} · {'pass' if gate.passed else 'FAIL'}")
        put(gate.case, f"{gate.ability} · {gate.metric}",
            svg.Cell(value, _num(gate.delta, 3, True), tooltip, failed=not gate.passed))
    for case in report.cases:
        if case.error:
            for pair in pairs:
                put(case.id, pair, svg.Cell(None, "edit failed", case.error, failed=True,
                                            fill="#455A64"))
    legend = ("Δ ≤ −2τ (worse)", "0", "Δ ≥ +2τ (better)")
    if turn:
        groups = {p: p.split(" · ")[0] for p in pairs}
        return svg.heatmap(pairs, cases, cells, title="", legend=legend, row_groups=groups)
    return svg.heatmap(cases, pairs, cells, title="", legend=legend,
                       row_groups={c.id: c.editor for c in report.cases})


def _regime_marker(regime: str) -> str:
    if regime.startswith("batch") and "sequential" in regime:
        return "diamond"
    return "square" if regime.startswith("batch") else "circle"


def has_curves(report: RunReport) -> bool:
    """Whether some (editor, regime) was evaluated at two or more checkpoints."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for case in report.cases:
        counts[(case.editor, case.regime)] += 1
    return any(n > 1 for n in counts.values())


def curve_svgs(report: RunReport) -> tuple[list[str], list[str], str]:
    """One panel per (ability, metric): edited score vs number of edits, a line per
    (editor, regime) chain starting from the unedited baseline at 0 edits. Returns the panels of
    each ability's first (paper) metric, those of its other metrics, and the shared legend."""
    colors = editor_colors(report)
    chains: dict[tuple[str, str], list[Case]] = defaultdict(list)
    for case in report.cases:
        chains[(case.editor, case.regime)].append(case)
    panels, others, legend_series = [], [], {}
    seen: set[str] = set()
    for ability, metric in report.ability_metrics():
        gates = {g.case: g for g in report.gates if (g.ability, g.metric) == (ability, metric)}
        if not gates:
            continue
        first = next(iter(gates.values()))
        series = []
        for (editor, regime), cases in chains.items():
            points = []
            for case in sorted(cases, key=lambda c: c.checkpoint):
                gate = gates.get(case.id)
                if gate is None:
                    continue
                # whisker: the gate's paired 95% CI of Δ, around the point (= baseline + Δ)
                points.append(svg.Point(
                    case.checkpoint, gate.edited, failed=not gate.passed,
                    y_low=gate.baseline + gate.ci_low, y_high=gate.baseline + gate.ci_high,
                    tooltip=f"{case.id}: {metric} {_num(gate.edited, 4)} (Δ {_num(gate.delta, 4, True)}"
                            f"{', FAIL' if not gate.passed else ''}) after {case.checkpoint} edits"))
            if not points:
                continue
            chain = len(points) > 1 or "sequential" in regime
            if chain:
                points.insert(0, svg.Point(0, first.baseline, tooltip=f"unedited: {first.baseline:.4f}"))
            series.append(svg.Series(f"{editor} · {regime}", colors[editor], points, line=chain,
                                     dashed=regime.startswith("batch"),
                                     marker=_regime_marker(regime)))
        info = report.metric_info(ability, metric)
        unit = f" ({info.unit})" if info.unit else ""
        guides = [svg.Guide(first.baseline, f"unedited {first.baseline:.3f}", "#616161"),
                  svg.Guide(first.baseline - first.tolerance, f"tolerance −{first.tolerance:g}",
                            svg.FAIL)]
        chart = svg.line_chart(series, title=f"{ability} · {metric}", x_label="number of edits",
                               y_label=f"{metric}{unit}", guides=guides, legend=False)
        (others if ability in seen else panels).append(chart)
        seen.add(ability)
        legend_series.update({s.name: s for s in series})
    legend = svg.legend(list(legend_series.values()), width=1200) if legend_series else ""
    return panels, others, legend


def glue_eval_svgs(report: RunReport) -> list[str]:
    """The lifelong-editing papers' figure: per (editor, regime) chain, the weighted F1 of every
    glue_eval task against the number of edits, the unedited model at 0."""
    tasks = [a for a, m in report.ability_metrics() if m == "weighted_f1"]
    if not tasks:
        return []
    gates = {(g.case, g.ability): g for g in report.gates if g.metric == "weighted_f1"}
    chains: dict[tuple[str, str], list[Case]] = defaultdict(list)
    for case in report.cases:
        chains[(case.editor, case.regime)].append(case)
    charts = []
    for (editor, regime), cases in chains.items():
        series = []
        for index, task in enumerate(tasks):
            points = []
            for case in sorted(cases, key=lambda c: c.checkpoint):
                gate = gates.get((case.id, task))
                if gate is None:
                    continue
                if not points:
                    points.append(svg.Point(0, gate.baseline, tooltip=f"unedited: {gate.baseline:.3f}"))
                points.append(svg.Point(case.checkpoint, gate.edited, failed=not gate.passed,
                                        tooltip=f"{task} after {case.checkpoint} edits: "
                                                f"F1 {gate.edited:.3f}"))
            if points:
                series.append(svg.Series(task.removeprefix("glue_"), svg.color(index), points,
                                         line=True, marker="circle"))
        if series:
            charts.append(svg.line_chart(series, title=f"{editor} · {regime}",
                                         x_label="number of edits", y_label="weighted F1"))
    return charts


def tradeoff_svg(report: RunReport) -> str | None:
    colors = editor_colors(report)
    by_editor: dict[str, list[svg.Point]] = defaultdict(list)
    chains: dict[tuple[str, str], list[svg.Point]] = defaultdict(list)
    for case in sorted(report.cases, key=lambda c: (c.editor, c.regime, c.checkpoint)):
        x, y = edit_score(report, case.id), retention(report, case.id)
        if x is None or y is None:
            continue
        label = f"@{case.checkpoint}" if case.checkpoint > 1 else ""
        point = svg.Point(x, y, label=label, failed=not case.passed,
                          tooltip=f"{case.id}: edit score {x:.2f}, ability retention {y:.2f}"
                                  f"{'' if case.passed else ' (a gate failed)'}")
        by_editor[case.editor].append(point)
        chains[(case.editor, case.regime)].append(point)
    if not by_editor:
        return None
    series = [svg.Series(editor, colors[editor], points, line=False)
              for editor, points in by_editor.items()]
    paths = [(colors[editor], points) for (editor, _), points in chains.items() if len(points) > 1]
    top = max([1.1] + [p.y * 1.05 for s in series for p in s.points])
    bottom = min([0.0] + [p.y for s in series for p in s.points])
    return svg.scatter(series, title="Edit success vs ability retention (each point an edited state)",
                       x_label="edit score: harmonic mean of edit-success rates",
                       y_label="ability retention (1 = unedited, 0 = chance)",
                       x_range=(0.0, 1.0), y_range=(bottom, top), ideal=(1.0, 1.0), chains=paths)


# ------------------------------------------------------------------------- tables


def _worst_table(gate: Gate) -> str:
    if not gate.worst:
        return '<span class="muted">no item got worse</span>'
    rows = "".join(
        f"<tr><td>{_e(w.item_id)}</td><td class=num>{_num(w.baseline)} → {_num(w.edited)}</td>"
        f"<td>{_e(_short(w.prediction_before, 60))}</td><td>{_e(_short(w.prediction_after, 60))}</td>"
        f"<td>{_e(_short(w.gold, 60))}</td></tr>" for w in gate.worst)
    count = len(gate.worst)
    title = "the item that got worse" if count == 1 else f"{count} items that got worse most"
    return (f'<details><summary>{title}</summary><table class="worst">'
            "<tr><th>item</th><th>score before → after</th><th>prediction before</th>"
            f"<th>prediction after</th><th>gold</th></tr>{rows}</table></details>")


def gate_tables(report: RunReport) -> str:
    parts = []
    for case in report.cases:
        gates = [g for g in report.gates if g.case == case.id]
        failed = sum(not g.passed for g in gates)
        status = _badge(case.passed, "abilities intact" if case.passed else
                        ("edit failed" if case.error else f"{failed} of {len(gates)} failed"))
        spe = case.seconds_per_edit
        timing = " · cached edit" if case.cached else (f" · {spe:.1f} s/edit" if spe else "")
        rows = "".join(
            f'<tr class="{"" if g.passed else "failrow"}"><td>{_e(g.ability)}</td><td>{_e(g.metric)}</td>'
            f"<td class=num>{_num(g.baseline)} {_ci(g.baseline_ci)}</td>"
            f"<td class=num>{_num(g.edited)} {_ci(g.edited_ci)}</td>"
            f"<td class=num><b>{_num(g.delta, 3, True)}</b> {_ci([g.ci_low, g.ci_high], 3, True)}</td>"
            f"<td class=num>−{g.tolerance:g}</td><td class=num>{g.n_items}</td>"
            f"<td>{_badge(g.passed)}</td><td>{_worst_table(g)}</td></tr>" for g in gates)
        error = f'<p class="error">{_e(case.error)}</p>' if case.error else ""
        table = (
            '<table class="gates"><tr><th>ability</th><th>metric</th><th>baseline [95% CI]</th>'
            "<th>edited [95% CI]</th><th>Δ [95% CI]</th><th>tolerance</th><th>n</th><th>gate</th>"
            f"<th>drill-down</th></tr>{rows}</table>" if gates else "")
        open_attr = " open" if not case.passed else ""
        parts.append(
            f'<details class="case"{open_attr}><summary><b>{_e(case.id)}</b> {status} '
            f'<span class="muted">{_e(case.editor)} · {_e(case.regime)} · {case.checkpoint} '
            f'edit{"s" * (case.checkpoint != 1)}{timing}</span></summary>{error}{table}</details>')
    return "".join(parts)


def success_table(report: RunReport) -> str:
    metrics = report.success_metrics()
    if not metrics:
        return '<p class="muted">no edit-success tests ran</p>'
    head = "".join(f"<th>{_e(m)}</th>" for m in metrics)
    rows = []
    for case in report.cases:
        cells = []
        for metric in metrics:
            s = next((s for s in report.success if s.case == case.id and s.metric == metric), None)
            if s is None:
                cells.append("<td class=num>—</td>")
                continue
            failed = f' title="failed probes: {_e(", ".join(s.failed[:20]))}"' if s.failed else ""
            cls = "num" if s.passed else "num failcell"
            cells.append(f'<td class="{cls}"{failed}>{s.rate:.2f} '
                         f'{_ci([s.ci_low, s.ci_high], 2) if s.ci_low is not None else ""}'
                         f' <span class="muted">≥{s.threshold:g}, n={s.probes}</span></td>')
        score = edit_score(report, case.id)
        rows.append(f"<tr><td><b>{_e(case.id)}</b></td>{''.join(cells)}"
                    f"<td class=num>{_num(score, 2)}</td></tr>")
    return (f'<table class="success"><tr><th>case</th>{head}<th>edit score</th></tr>'
            f"{''.join(rows)}</table><p class=note>Rates with 95% Wilson intervals; the threshold "
            "and probe count follow each rate. Edit score: harmonic mean of the rates.</p>")


def budget_and_timing(report: RunReport) -> str:
    parts = []
    if report.budgets:
        rows = "".join(f"<tr><td>{_e(b.editor)}</td><td>{_e(b.regime)}</td><td class=num><b>{b.text}"
                       f"</b></td><td>{_e(', '.join(map(str, b.checkpoints)))}</td></tr>"
                       for b in report.budgets)
        parts.append("<h3>Edit budget</h3><table><tr><th>editor</th><th>regime</th><th>budget</th>"
                     f"<th>checkpoints evaluated</th></tr>{rows}</table><p class=note>Largest "
                     "checkpoint up to which every ability gate passed (≥: never failed).</p>")
    timings = report.timings
    rows = "".join(
        f"<tr><td>{_e(editor)}</td><td class=num>{'cached' if spe is None else f'{spe:.2f}'}</td>"
        f"<td class=num>{timings.edit_seconds.get(editor, 0.0):.1f}</td></tr>"
        for editor, spe in timings.seconds_per_edit.items())
    parts.append("<h3>Timings</h3><table><tr><th>editor</th><th>seconds per edit</th>"
                 f"<th>editor seconds in this run</th></tr>{rows}</table>")
    facts = [("session wall time", f"{timings.session_seconds:.1f} s"),
             ("sum of test durations", f"{timings.tests_seconds:.1f} s")]
    facts += [(k.removesuffix("_s").replace(".", " · ").replace("_", " "), f"{v:.2f} s")
              for k, v in timings.process.items()]
    facts += [(f"tests of {k}", f"{v:.1f} s") for k, v in timings.by_case.items()]
    parts.append(_kv_table(facts))
    if timings.benchmarks:
        rows = "".join(f"<tr><td>{_e(b.get('name', ''))}</td><td class=num>{_num(b.get('mean'), 4)}</td>"
                       f"<td class=num>{_num(b.get('stddev'), 4)}</td><td class=num>{b.get('rounds', '')}"
                       "</td></tr>" for b in timings.benchmarks)
        source = _e(timings.benchmarks[0].get("file", ""))
        parts.append(f"<h3>Latest benchmarks</h3><p class=note>{source}</p><table><tr><th>benchmark"
                     f"</th><th>mean s</th><th>stddev s</th><th>rounds</th></tr>{rows}</table>")
    return "".join(parts)


def _kv_table(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def environment_table(report: RunReport) -> str:
    env = report.environment
    commit = (env.git_commit or "—") + (" (uncommitted changes)" if env.git_dirty else "")
    pairs = [("model", env.model), ("model fingerprint", env.model_fingerprint or "—"),
             ("profile", env.profile), ("items per ability", str(env.limit or "profile default")),
             ("device / dtype / eval / generation",
              f"{env.device} / {env.dtype} / {env.eval_dtype} / {env.generation_dtype}"),
             ("kernels", ", ".join(f"{k} {v}" for k, v in env.compute.items()) or "—"),
             ("attention fallback", env.attention_fallback or "none"),
             ("seed", str(env.seed)),
             ("edit source", env.edit_source), ("data dir", env.data_dir),
             ("git commit", commit), ("branch", env.git_branch or "—"),
             ("python", env.python), ("platform", env.platform), ("host", env.hostname),
             ("CPUs", str(env.cpu_count)), ("xdist workers", str(env.xdist_workers)),
             ("tolerances", f"{env.tolerances_file} (sha256 {(env.tolerances_sha256 or '')[:12]})"),
             ("command", " ".join(env.command))]
    pairs += [(f"editor {name}", f"version {e.version}, code {(e.code or '—')[:12]}"
               f"{', batches' if e.can_batch else ''}") for name, e in env.editors.items()]
    def metric(m: MetricInfo) -> str:
        chance = f", chance {m.chance:g}" if m.chance is not None else ""
        return f"{m.name} ({m.kind}{chance}{', ' + m.unit if m.unit else ''})"

    pairs += [(f"ability {name}", f"code {(a.code or '—')[:12]}; metrics "
               f"{', '.join(map(metric, a.metrics))}{'; NOTE: ' + a.note if a.note else ''}")
              for name, a in env.abilities.items()]
    pairs += [(f"hparams {name}", digest[:12]) for name, digest in env.hparams_sha256.items()]
    if env.hparam_overrides:
        pairs.append(("--hparam", str(env.hparam_overrides)))
    pairs.append(("libraries", ", ".join(f"{k} {v}" for k, v in env.libraries.items())))
    return _kv_table(pairs)


def comparison_section(report: RunReport) -> str:
    comparison = report.comparison
    if comparison is None:
        return ""
    regressed = len(comparison.regressions)
    head = (f"<p>Compared with run <code>{_e(comparison.base_run)}</code> ({_e(comparison.base_created)}"
            f"{', commit ' + _e(comparison.base_commit[:10]) if comparison.base_commit else ''}): "
            f"{_badge(not regressed, f'{regressed} regressions' if regressed else 'no regression')} "
            f"{len(comparison.improvements)} improved, {comparison.unchanged} identical. "
            f'<span class="muted">Rule: {_e(comparison.rule)}.</span></p>')
    if not comparison.changes:
        return f'<section id="compare"><h2>Since the last run</h2>{head}<p>No change.</p></section>'

    def value(v: object) -> str:
        return _num(v, 4, True) if isinstance(v, float) else _e("—" if v is None else v)

    def table(changes: list) -> str:
        rows = "".join(
            f'<tr class="{c.verdict}"><td>{_e(c.verdict)}</td><td>{_e(c.kind)}</td><td>{_e(c.key)}</td>'
            f"<td class=num>{value(c.before)}</td><td class=num>{value(c.after)}</td>"
            f"<td>{_e(c.note)}</td></tr>" for c in changes)
        return ('<table class="changes"><tr><th>verdict</th><th>what</th><th>key</th><th>before</th>'
                f"<th>after</th><th>note</th></tr>{rows}</table>")

    # Regressions, improvements and environment changes in view; the rest one click away.
    shown = [c for c in comparison.changes
             if c.verdict in ("regressed", "improved") or c.kind == "environment"]
    rest = [c for c in comparison.changes if c not in shown]
    more = (f"<details><summary>{len(rest)} more: moved within tolerance, added, removed, baseline "
            f"and timing changes</summary>{table(rest)}</details>" if rest else "")
    return (f'<section id="compare"><h2>Since the last run</h2>{head}'
            f"{table(shown) if shown else ''}{more}</section>")


# ------------------------------------------------------------------------- page

CSS = """
:root { --fail: #C62828; --pass: #2E7D32; --muted: #666; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1b1b1b;
       margin: 0; background: #FAFAFA; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 28px 60px; }
header { background: #fff; border-bottom: 1px solid #ddd; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { color: var(--muted); }
nav a { margin-right: 14px; color: #0b5cad; text-decoration: none; }
section { background: #fff; border: 1px solid #e2e2e2; border-radius: 8px; padding: 14px 18px;
          margin: 18px 0; }
h2 { font-size: 17px; margin: 2px 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 12px; }
.card { background: #fff; border: 1px solid #e2e2e2; border-radius: 8px; padding: 10px 14px;
        min-width: 150px; }
.card .big { font-size: 22px; font-weight: 650; }
.card .label { color: var(--muted); font-size: 12px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.badge.pass { background: #E8F5E9; color: var(--pass); }
.badge.fail { background: #FFEBEE; color: var(--fail); }
.verdict { font-size: 15px; padding: 3px 12px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border-bottom: 1px solid #eee; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #F5F5F5; font-weight: 600; font-size: 12.5px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: var(--muted); font-size: 11.5px; }
tr.failrow td { background: #FFF5F5; }
td.failcell { background: #FFEBEE; color: var(--fail); }
tr.regressed td { background: #FFEBEE; } tr.improved td { background: #E8F5E9; }
.muted, .note { color: var(--muted); } .note { font-size: 12.5px; }
.error { color: var(--fail); font-family: ui-monospace, monospace; white-space: pre-wrap; }
details.case { border-top: 1px solid #eee; padding: 6px 0; }
details.case > summary { cursor: pointer; font-size: 14px; }
details summary { cursor: pointer; color: #0b5cad; }
details.case > summary { color: inherit; }
table.worst { font-size: 12px; margin: 4px 0 8px; } table.worst td { max-width: 260px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; overflow-x: auto; }
.charts > svg { flex: none; }
.chart { background: #fff; }
table.kv th { width: 200px; background: none; font-weight: 600; }
code { background: #F1F1F1; padding: 0 4px; border-radius: 3px; }
"""


def _cards(report: RunReport) -> str:
    failed_gates = sum(not g.passed for g in report.gates)
    failed_rates = sum(not s.passed for s in report.success)
    cards = [(str(len(report.cases)), "edited states (cases)"),
             (f"{len(report.gates) - failed_gates}/{len(report.gates)}", "ability gates passed"),
             (f"{len(report.success) - failed_rates}/{len(report.success)}", "edit-success gates passed")]
    cards += [(b.text, f"edit budget · {b.editor} {b.regime}") for b in report.budgets]
    cards += [("cached" if s is None else f"{s:.1f} s", f"per edit · {editor}")
              for editor, s in report.timings.seconds_per_edit.items()]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="big">{_e(big)}</div><div class="label">{_e(label)}</div></div>'
        for big, label in cards) + "</div>"


def render_html(report: RunReport) -> str:
    env = report.environment
    tests = report.tests
    checks = len(report.gates) + len(report.success) + len(report.baselines)
    failures = (sum(not g.passed for g in report.gates) + sum(not s.passed for s in report.success)
                + sum(not b.passed for b in report.baselines) + sum(bool(c.error) for c in report.cases))
    verdict = _badge(report.passed, f"all {checks} gates pass" if report.passed
                     else f"{failures} failed of {checks + sum(bool(c.error) for c in report.cases)}")
    limit = f" · {env.limit} items per ability" if env.limit else ""
    commit = f" · commit {env.git_commit[:10]}{'+' if env.git_dirty else ''}" if env.git_commit else ""
    curves, more_curves, curve_legend = curve_svgs(report) if has_curves(report) else ([], [], "")
    tradeoff = tradeoff_svg(report)
    sections = [comparison_section(report)]
    if report.gates:
        sections.append('<section id="heatmap"><h2>Editor × ability: Δ vs the unedited baseline</h2>'
                        f'<div class="charts">{heatmap_svg(report)}</div><p class=note>Each cell is one '
                        "gate: the mean paired per-item Δ (edited − baseline), coloured in units of "
                        "the gate's tolerance τ. Red = worse; a dark border and ✗ = the gate failed "
                        "(drop beyond τ with the 95% CI below 0); slate = the edit itself failed. "
                        "Hover a cell for numbers.</p></section>")
        more = (f"<details><summary>{len(more_curves)} more charts: the other metrics</summary>"
                f'<div class="charts">{"".join(more_curves)}</div></details>' if more_curves else "")
        body = (curve_legend + '<div class="charts">' + "".join(curves) + "</div>" + more if curves
                else "<p>No regime of this run was evaluated at several numbers of edits: run a "
                     "sequential one (e.g. <code>--regimes single,sequential-10 --checkpoints "
                     "1,5,10</code>) to see how abilities degrade as edits accumulate.</p>")
        note = ("<p class=note>Lines: sequential regimes, starting from the unedited model at 0 "
                "edits; lone markers: single and batch edits (square: batch). Whiskers: the gate's "
                "paired 95% CI of Δ (edited − unedited, item by item), drawn around the point; red "
                "ring: the gate failed; grey line: unedited score; red dashed line: the tolerance.</p>"
                if curves else "")
        sections.append(f'<section id="curves"><h2>Ability vs number of edits</h2>{body}{note}</section>')
    glue = glue_eval_svgs(report)
    if glue:
        sections.append('<section id="glue-eval"><h2>glue_eval: weighted F1 vs number of edits</h2>'
                        '<p>As the lifelong-editing papers plot it: one line per task, the '
                        'unedited model at 0 edits; a red marker is a failed gate.</p>'
                        f'<div class="charts">{"".join(glue)}</div></section>')
    if tradeoff:
        sections.append('<section id="tradeoff"><h2>Trade-off: edit success vs ability retention'
                        f'</h2><div class="charts">{tradeoff}</div><p class=note>Top right is ideal: '
                        "the edits took and the general abilities are intact. Retention averages each "
                        "ability's paper metric rescaled so that 1 is the unedited score and 0 is chance"
                        "; @N labels sequential checkpoints; red ring: a gate failed.</p></section>")
    sections.append(f'<section id="gates"><h2>Gates</h2>{gate_tables(report)}</section>')
    sections.append(f'<section id="success"><h2>Edit success</h2>{success_table(report)}</section>')
    baselines = "".join(f"<tr><td>{_e(b.ability)}</td><td>{_badge(b.passed)}</td>"
                        f"<td>{_e('; '.join(b.problems))}</td></tr>" for b in report.baselines)
    if baselines:
        sections.append('<section id="baselines"><h2>Golden baselines (unedited model)</h2><table>'
                        f"<tr><th>ability</th><th>check</th><th>problems</th></tr>{baselines}</table>"
                        "</section>")
    sections.append(f'<section id="timing"><h2>Budgets and timings</h2>{budget_and_timing(report)}'
                    "</section>")
    sections.append(f'<section id="env"><h2>Environment</h2>{environment_table(report)}</section>')
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("compare", "since last run"), ("heatmap", "heat map"), ("curves", "curves"),
        ("tradeoff", "trade-off"), ("gates", "gates"), ("success", "edit success"),
        ("timing", "timings"), ("env", "environment")) if f'id="{a}"' in "".join(sections))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>editgate · {_e(env.model)} · {_e(report.run_id)}</title>
<style>{CSS}</style></head>
<body><header><h1>editgate report {verdict}</h1>
<div class="sub">{_e(env.model)} · {_e(env.profile)} profile{_e(limit)} · run {_e(report.run_id)} ·
{_e(report.created)}{_e(commit)} · tests: {tests.passed} passed, {tests.failed} failed,
{tests.skipped} skipped{f", {tests.errors} errors" if tests.errors else ""}</div>
<nav>{nav}</nav>{_cards(report)}</header>
<main>{"".join(sections)}</main></body></html>
"""
