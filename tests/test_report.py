"""Reports: the JSON schema round trip, collection from records, comparison, history, HTML, terminal."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import multiprocessing
import re
from pathlib import Path

import pytest
from report_data import synthetic_environment, synthetic_records, synthetic_report

from editgate.report.cli import main as cli
from editgate.report.collect import build_report, wilson_interval
from editgate.report.compare import compare
from editgate.report.history import History
from editgate.report.html import render_html
from editgate.report.schema import (
    SCHEMA_VERSION,
    Case,
    Gate,
    RunReport,
    SchemaError,
    Success,
    dumps_run,
    load_run,
    save_run,
)
from editgate.summary import render_comparison, render_run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> RunReport:
    return synthetic_report(tmp_path_factory.mktemp("items"), memit_error=True)


# ------------------------------------------------------------------------- schema


def test_json_round_trip_is_lossless(report, tmp_path):
    path = save_run(report, tmp_path / "run.json")
    loaded = load_run(path)
    assert loaded == report
    assert dumps_run(loaded) == dumps_run(report)
    data = json.loads(path.read_text())
    assert data["schema"] == "editgate.run" and data["schema_version"] == SCHEMA_VERSION


def test_load_run_rejects_other_versions_and_bad_fields(report, tmp_path):
    data = json.loads(dumps_run(report))
    for change, message in [({"schema_version": SCHEMA_VERSION + 1}, "schema_version 2"),
                            ({"schema": "something-else"}, "not an editgate run report")]:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(SchemaError, match=message):
            load_run(path)
    broken = json.loads(dumps_run(report))
    broken["gates"][3]["delta"] = "a lot"
    path.write_text(json.dumps(broken))
    with pytest.raises(SchemaError, match=r"\$\.gates\[3\]\.delta: expected float"):
        load_run(path)
    del broken["environment"]
    path.write_text(json.dumps(broken))
    with pytest.raises(SchemaError, match="missing required field 'environment'"):
        load_run(path)


def test_non_finite_numbers_are_written_as_strict_json(report, tmp_path):
    copy = dataclasses.replace(report, gates=[dataclasses.replace(report.gates[0], delta=float("nan"))])
    data = json.loads(dumps_run(copy), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert data["gates"][0]["delta"] is None
    assert math.isnan(load_run(save_run(copy, tmp_path / "nan.json")).gates[0].delta)


# ------------------------------------------------------------------------- collection


def test_report_holds_every_item_and_worst_items(report):
    assert set(report.results) == {"sentiment", "nli", "reasoning"}
    # the unedited model plus every distinct edited state that has gates
    states = {c.state_key for c in report.cases if not c.error}
    assert set(report.results["nli"]) == states | {"base"}
    assert all(len(items) == 40 for items in report.results["nli"].values())
    gate = report.gate("rome-sequential-10", "sentiment", "accuracy")
    assert not gate.passed and len(gate.worst) == 10
    assert all(w.edited < w.baseline for w in gate.worst)
    assert gate.baseline_ci[0] <= gate.baseline <= gate.baseline_ci[1]


def test_cases_budgets_and_seconds_per_edit(report):
    failed = report.case("memit-batch-10")
    assert failed.error and not failed.passed
    budgets = {b.key: b for b in report.budgets}
    assert budgets["rome/sequential-10"].budget == 1
    assert budgets["alphaedit/sequential-10"].text == "≥10"
    assert "rome/single" not in budgets
    assert report.case("rome-sequential-10").new_edits == 5
    assert report.timings.seconds_per_edit["rome"] == pytest.approx(7.5)
    assert report.timings.seconds_per_edit["alphaedit"] is None  # every delta came from the cache
    assert report.case("alphaedit-single").cached


def test_wilson_interval_is_sane_at_the_edges():
    low, high = wilson_interval(1.0, 1)
    assert 0.1 < low < 0.3 and high == 1.0
    low, high = wilson_interval(0.5, 1000)
    assert 0.46 < low < 0.5 < high < 0.54
    assert wilson_interval(0.5, 0) is None


def test_missing_result_files_degrade_to_the_gate_worst_items(tmp_path):
    records = synthetic_records(tmp_path)
    for record in records:
        if record["kind"] == "gate":
            record["edited_results"] = str(tmp_path / "gone.json")
    report = build_report(records, synthetic_environment(), run_id="r", created="c")
    gate = report.gate("rome-sequential-10", "nli", "accuracy")
    assert gate.edited_results is None and len(gate.worst) == 5  # what paired_gate kept


# ------------------------------------------------------------------------- comparison


def test_identical_runs_show_no_change(report):
    comparison = compare(report, report)
    assert comparison.changes == [] and comparison.unchanged > 50
    out = io.StringIO()
    render_comparison(comparison, out, color=False)
    assert "no change" in out.getvalue()


def test_comparison_finds_regressions_and_a_shrunk_budget(tmp_path):
    before = synthetic_report(tmp_path / "a", damage_scale=0.0)
    after = synthetic_report(tmp_path / "b", damage_scale=1.0, memit_error=True,
                             run_id="20250102T000000Z-bbbbbb")
    after.environment.editors["rome"].version = "2"
    comparison = compare(after, before)
    regressed = {(c.kind, c.key) for c in comparison.regressions}
    assert ("gate", "rome-sequential-10/sentiment.accuracy") in regressed
    assert ("budget", "rome/sequential-10") in regressed  # ≥10 → 1
    assert ("case", "memit-batch-10") in regressed  # the edit now fails
    budget = next(c for c in comparison.changes if c.key == "rome/sequential-10")
    assert (budget.before, budget.after) == ("≥10", "1")
    assert any(c.kind == "environment" and c.key == "editor rome version" for c in comparison.changes)
    assert not comparison.improvements
    reverse = compare(before, after)
    assert not reverse.regressions
    assert {("budget", "rome/sequential-10"), ("case", "memit-batch-10")} <= {
        (c.kind, c.key) for c in reverse.improvements}
    out = io.StringIO()
    render_comparison(comparison, out, color=False, fail=True)
    text = out.getvalue()
    assert "regressed" in text and "rome/sequential-10 ≥10 → 1" in text and "session fails" in text


def test_a_change_of_kernels_alone_is_not_a_regression(tmp_path):
    """Same code and inputs on another CPU: moved verdicts are the environment's, not the
    editor's; with the editor's code changed too, they are regressions again."""
    before = synthetic_report(tmp_path / "a", damage_scale=0.0)
    after = synthetic_report(tmp_path / "b", damage_scale=1.0, run_id="20250102T000000Z-bbbbbb")
    for report, capability in ((before, "AVX512"), (after, "AVX2")):
        report.environment.compute = {"device": "cpu", "cpu_capability": capability}
        for info in [*report.environment.editors.values(), *report.environment.abilities.values()]:
            info.code = "same-code"
    comparison = compare(after, before)
    assert comparison.environment_only
    assert comparison.environment_changed == ["cpu_capability AVX512 → AVX2"]
    assert not comparison.regressions
    assert ("gate", "rome-sequential-10/sentiment.accuracy") in {
        (c.kind, c.key) for c in comparison.changes if c.verdict == "environment"}
    out = io.StringIO()
    render_comparison(comparison, out, color=False)
    assert "moved with the environment" in out.getvalue()
    assert "only the environment differs" in out.getvalue()
    after.environment.editors["rome"].code = "new-code"
    mixed = compare(after, before)
    assert not mixed.environment_only and mixed.regressions


def test_a_wide_regression_tolerance_forgives_drift_but_not_failures(tmp_path):
    before = synthetic_report(tmp_path / "a", damage_scale=0.9)
    after = synthetic_report(tmp_path / "b", damage_scale=1.0)
    strict = compare(after, before, tolerance=0.0)
    lenient = compare(after, before, tolerance=10.0)
    assert len(lenient.regressions) < len(strict.regressions)
    assert all(c.kind != "gate" or "fails" in c.note for c in lenient.regressions)


# ------------------------------------------------------------------------- history


def _append(args: tuple[str, int]) -> None:
    path, index = args
    report = synthetic_report(Path(path).parent / f"items-{index}", run_id=f"20250101T0000{index:02d}Z-x",
                              created=f"2025-01-01T00:00:{index:02d}+00:00")
    History(Path(path)).append(report.without_results())


def test_history_appends_concurrently_and_finds_the_last_comparable_run(tmp_path):
    path = tmp_path / "history.sqlite"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append, [(str(path), i) for i in range(12)])
    history = History(path)
    entries = history.entries()
    assert len(entries) == 12 and entries[0].run_id == "20250101T000011Z-x"
    assert entries[0].editors == {"rome": "1", "memit": "1", "alphaedit": "1"}
    current = synthetic_report(tmp_path / "now", run_id="20250101T000100Z-now",
                               created="2025-01-01T00:01:00+00:00")
    assert history.last(like=current).run_id == "20250101T000011Z-x"
    other_model = dataclasses.replace(current, environment=synthetic_environment(model="gemma3-270m"))
    assert history.last(like=other_model) is None
    assert history.load("20250101T000003").run_id == "20250101T000003Z-x"  # by prefix
    with pytest.raises(KeyError, match="ambiguous"):
        history.load("20250101T0000")
    with pytest.raises(KeyError, match="no run"):
        history.load("1999")
    stored = history.load("20250101T000003Z-x")
    assert stored.results == {} and len(stored.gates) == len(current.gates)


def test_history_of_a_fresh_folder_is_empty(tmp_path):
    history = History(tmp_path / "none" / "history.sqlite")
    assert history.entries() == [] and history.last() is None


# ------------------------------------------------------------------------- HTML and terminal


def test_html_is_self_contained_with_plots_and_drill_down(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:)?//", page)
    assert page.count('class="chart heatmap"') == 1
    assert page.count('class="chart line-chart"') == 6  # one per (ability, metric)
    assert page.count('class="chart scatter"') == 1
    assert "rome · sequential-10" in page and "alphaedit-sequential-10@5" in page
    assert "items that got worse most" in page  # drill-down tables
    assert "edit failed" in page and "EditFailure" in page
    assert page.count("<svg") == page.count("</svg>")


def test_terminal_summary_has_rows_budgets_and_failures(report):
    out = io.StringIO()
    render_run(report, out, width=120, color=False)
    text = out.getvalue()
    assert "ability retention after editing" in text
    assert re.search(r"rome-sequential-10 .*0\.375 -0\.400 ✗", text)
    assert "edit budget" in text and "alphaedit sequential-10 ≥10" in text
    assert "seconds per edit: rome 7.5 · memit 7.5 · alphaedit cached" in text
    assert "✗ rome-sequential-10@5:" in text and "edit failed memit-batch-10" in text


@pytest.mark.parametrize("copies", [1, 5])  # 3 abilities; 15 abilities (the paper's 8 and more)
def test_terminal_summary_of_one_editor_fits_a_screen(report, copies):
    only = dataclasses.replace(
        report, cases=[c for c in report.cases if c.editor == "memit"],
        gates=[dataclasses.replace(g, ability=f"{g.ability}{k or ''}") for k in range(copies)
               for g in report.gates if g.case.startswith("memit")],
        success=[s for s in report.success if s.case.startswith("memit")],
        budgets=[b for b in report.budgets if b.editor == "memit"])
    out = io.StringIO()
    render_run(only, out, width=120, color=True)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.getvalue().splitlines()]
    assert len(lines) <= 40
    assert max(len(line) for line in lines) <= 120
    assert "…" not in re.sub(r"… (and )?\d+ more", "", "\n".join(lines))  # no cell cut short
    if copies > 1:  # 15 abilities × 5 cases: a verdict grid, every ability named in its key
        assert any("sequential-10@5" in line and "✓" in line for line in lines)
        assert all(f"nli{k}" in "\n".join(lines) for k in range(1, copies))


# ------------------------------------------------------------------------- CLI


def test_cli_show_compare_html_history(report, tmp_path, capsys):
    reports = tmp_path / "reports"
    older = dataclasses.replace(report, run_id="20241231T000000Z-old",
                                created="2024-12-31T00:00:00+00:00")
    History(reports / "history.sqlite").append(older)
    save_run(report, reports / "runs" / f"{report.run_id}.json")
    History(reports / "history.sqlite").append(report, reports / "runs" / f"{report.run_id}.json")
    base = ["--report-dir", str(reports)]
    assert cli([*base, "history"]) == 0
    assert "20241231T000000Z-old" in capsys.readouterr().out
    assert cli([*base, "show", "last"]) == 1  # the run has failed gates
    assert "rome-sequential-10" in capsys.readouterr().out
    assert cli([*base, "compare", report.run_id, "--fail-on-regression"]) == 0
    assert "no change" in capsys.readouterr().out
    out = tmp_path / "page.html"
    assert cli([*base, "html", "20241231", "-o", str(out)]) == 0
    assert "class=\"chart heatmap\"" in out.read_text()
    assert cli([*base, "show", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_html_adapts_to_many_metrics_and_to_runs_without_curves(report):
    singles = [c for c in report.cases if c.regime == "single"]
    gates = [dataclasses.replace(g, ability=f"{g.ability}{k}") for k in range(6)
             for g in report.gates if g.case in {c.id for c in singles}]
    page = render_html(dataclasses.replace(report, cases=singles, gates=gates))
    assert "No regime of this run was evaluated at several numbers of edits" in page
    assert 'class="chart line-chart"' not in page
    heatmap = re.search(r'<svg class="chart heatmap"[^>]* width="(\d+)"', page)
    assert heatmap and int(heatmap[1]) < 1200  # 36 metrics became rows, not 36 columns


def quick_matrix_report() -> RunReport:
    """The default quick matrix (every editor but the controls × the quick regimes and
    checkpoints × every quick ability and metric), with some failed gates, edits and rates."""
    from editgate.profiles import get_profile
    from editgate.regimes import Regime
    from editgate.registry import ABILITIES, EDITORS

    profile = get_profile("quick")
    editors = [e for e in EDITORS.names() if not EDITORS.get(e).control]
    abilities = [a for a in ABILITIES.names() if profile.includes(ABILITIES.get(a))]
    cases, gates, success = [], [], []
    for editor in editors:
        for name in profile.regimes:
            regime = Regime.parse(name)
            if regime.batch_size > 1 and not EDITORS.get(editor).can_batch:
                continue
            for checkpoint in regime.checkpoints(profile.checkpoints):
                suffix = f"@{checkpoint}" if checkpoint != regime.total else ""
                case = Case(f"{editor}-{name}{suffix}", editor, name, checkpoint,
                            error="boom" if editor == "kn" and checkpoint == 10 else None)
                cases.append(case)
                for a in abilities:
                    for metric in ABILITIES.get(a)().active_metrics(False):
                        bad = editor == "memit" and checkpoint == 10 and a < "l"
                        gates.append(Gate(case.id, a, metric.name, 50, 0.7, 0.6 if bad else 0.7,
                                          -0.1 if bad else 0.0, -0.15, -0.05, 0.05, not bad))
                for metric in ("efficacy", "paraphrase", "neighborhood"):
                    success.append(Success(case.id, metric, 0.5, 0.8, False, 20))
    return RunReport(run_id="r", created="", environment=synthetic_environment(), cases=cases,
                     gates=gates, success=success)


@pytest.mark.parametrize("width", [100, 80])
def test_the_default_quick_matrix_summary_fits_the_terminal(width):
    report = quick_matrix_report()
    assert len(report.cases) > 20 and len(report.abilities()) >= 14  # the real default size
    out = io.StringIO()
    render_run(report, out, width=width, color=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert too_wide == [] and "…" not in re.sub(r"… (and )?\d+ more", "", text)  # no cut cell
    for case in report.cases:  # every case and every ability's verdict is on screen
        assert f" {case.id.removeprefix(case.editor + '-')} " in text
    assert "✗" in text and "✓" in text and "E" in text
    assert text.index("memit") < text.index("rome")  # the editor with failed gates first
