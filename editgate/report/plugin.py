"""pytest plugin: write the run's JSON and HTML reports, append it to the history, compare runs.

Enabled next to :mod:`editgate.plugin` (the project's root ``conftest.py`` lists it; elsewhere use
``-p editgate.report.plugin``). It gathers the outcome records that gate tests attach to their
reports — in the controller process, so it works the same under pytest-xdist — and at the end of
the session (controller only) writes::

    reports/runs/<run id>.json|html, reports/latest.json|html, reports/history.sqlite
(:mod:`editgate.report.output`).

A session without gate records (e.g. ``pytest tests``) writes nothing.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from editgate.outcomes import PROPERTY
from editgate.report.output import new_run_id, now
from editgate.report.schema import Comparison, RunReport, Tally, Timings

PLUGIN_NAME = "editgate-report"
MAIN_PLUGIN = "editgate-plugin"  # editgate.plugin.PLUGIN_NAME


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("editgate-report", "editgate: reports and regression tracking")
    group.addoption("--report-dir", help="where run reports and the history go "
                    "(default: ini editgate_report_dir, 'reports' in the rootdir)")
    group.addoption("--no-report", action="store_true",
                    help="write no JSON/HTML report and no history entry")
    group.addoption("--compare-to", metavar="last|RUN_ID|FILE.json",
                    help="compare this run with the last comparable run in the history (same "
                         "model, profile, item limit), a stored run id (prefix), or a run JSON file")
    group.addoption("--fail-on-regression", action="store_true",
                    help="fail the session when the comparison finds a regression "
                         "(implies --compare-to last)")
    group.addoption("--regression-tolerance", type=float, metavar="X",
                    help="Δ drop between runs tolerated before a gate counts as regressed "
                         "(default: the gate's own tolerance; 0.1 for edit-success rates)")
    parser.addini("editgate_report_dir", "folder of run reports and the history (relative to "
                  "rootdir)", default="reports")


def latest_benchmarks(folder: Path) -> list[dict[str, Any]]:
    """The newest pytest-benchmark result file under ``folder`` (``make bench`` saves there)."""
    files = sorted(folder.glob("**/*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    for path in reversed(files):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return [{"name": b["name"], "mean": float(b["stats"]["mean"]),
                     "stddev": float(b["stats"]["stddev"]), "rounds": int(b["stats"]["rounds"]),
                     "file": str(path)} for b in data.get("benchmarks", [])]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return []


class ReportPlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = now()
        self.clock = time.perf_counter()
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.durations: dict[str, float] = defaultdict(float)
        self.tally = Tally()
        self.report: RunReport | None = None
        self.paths: dict[str, Path] = {}
        self.notes: list[str] = []
        self.regressed = False

    # ---------------------------------------------------------------- options

    def report_dir(self) -> Path:
        value = self.config.getoption("--report-dir")
        if value:
            return Path(value).expanduser().resolve()
        return Path(self.config.rootpath) / self.config.getini("editgate_report_dir")

    def compare_target(self) -> str | None:
        target = self.config.getoption("--compare-to")
        if target is None and self.config.getoption("--fail-on-regression"):
            return "last"
        return target

    def check_options(self) -> None:
        """A named run that does not exist is a usage error now, not a surprise after the run."""
        target = self.compare_target()
        if target in (None, "last"):
            return
        if target.endswith(".json"):
            if not Path(target).is_file():
                raise pytest.UsageError(f"--compare-to {target}: no such file")
            return
        from editgate.report.history import HISTORY_FILE, History

        try:
            History(self.report_dir() / HISTORY_FILE).load(target)
        except KeyError as exc:
            raise pytest.UsageError(f"--compare-to: {exc.args[0]}") from None

    # ---------------------------------------------------------------- collection of outcomes

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.durations[report.nodeid] += report.duration
        if report.when == "call":
            if report.passed:
                self.tally.passed += 1
            elif report.failed:
                self.tally.failed += 1
            else:
                self.tally.skipped += 1
            for name, value in report.user_properties:
                if name == PROPERTY and isinstance(value, dict):
                    self.records.append((report.nodeid, value))
        elif report.skipped:
            self.tally.skipped += 1
        elif report.failed:
            self.tally.errors += 1

    # ---------------------------------------------------------------- end of session

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Build the run report (the terminal summary renders it), compare it and write it
        (unless --no-report)."""
        if hasattr(self.config, "workerinput") or not self.records:
            return
        try:
            self.report = self.build(int(exitstatus))
            self.compare(self.report)
            if not self.config.getoption("--no-report"):
                self.write(self.report)
        except Exception as exc:  # a report problem must never hide or change the test results
            self.notes.append(f"[red]report not written: {type(exc).__name__}: {exc}[/]")
            return
        if self.regressed and self.config.getoption("--fail-on-regression") \
                and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def build(self, exitstatus: int) -> RunReport:
        from editgate.report.collect import build_report
        from editgate.report.environment import capture

        # The main plugin, by its registered name: importing editgate.plugin would close a cycle
        # (it imports this module to render the run report).
        main = self.config.pluginmanager.get_plugin(MAIN_PLUGIN)
        main.setup()  # resolves options only: never loads a model
        session = main.active_session  # the model session, if this process had one
        lm = session.loaded_model if session is not None else None
        records = [record for _, record in self.records]
        fingerprint = next((r["model_fingerprint"] for r in records if r.get("model_fingerprint")),
                           getattr(lm, "fingerprint", None))
        abilities = list(dict.fromkeys(r["ability"] for r in records if "ability" in r))
        editors = list(dict.fromkeys([r["case"]["editor"] for r in records if "case" in r]))
        workers = getattr(self.config.option, "numprocesses", 0)
        env = capture(main.settings, rootdir=Path(self.config.rootpath), editors=editors,
                      abilities=abilities, model_fingerprint=fingerprint,
                      tolerances_file=getattr(main.tolerances, "source", None),
                      command=["pytest", *self.config.invocation_params.args],
                      xdist_workers=workers if isinstance(workers, int) else 0,
                      device=str(lm.device) if lm is not None else None,
                      attention_fallback=session.attention_fallback if session else None,
                      notes=main.ability_notes(abilities))
        by_case: dict[str, float] = defaultdict(float)
        case_of = {nodeid: r.get("case", {}).get("id", "baseline") for nodeid, r in self.records}
        for nodeid, seconds in self.durations.items():
            if nodeid in case_of:
                by_case[case_of[nodeid]] += seconds
        timings = Timings(
            session_seconds=round(time.perf_counter() - self.clock, 3),
            tests_seconds=round(sum(self.durations.values()), 3),
            by_case={k: round(v, 3) for k, v in by_case.items()},
            process={k: round(v, 3) for k, v in (session.timings if session else {}).items()
                     if isinstance(v, int | float) and math.isfinite(v)},
            benchmarks=latest_benchmarks(self.report_dir() / "benchmarks"))
        report = build_report(records, env, run_id=new_run_id(self.started),
                              created=self.started.isoformat(timespec="seconds"), timings=timings,
                              tests=self.tally)
        report.finished = now().isoformat(timespec="seconds")
        report.exit_status = exitstatus
        return report

    def compare(self, report: RunReport) -> None:
        from editgate.report.compare import compare
        from editgate.report.history import HISTORY_FILE, History
        from editgate.report.schema import load_run

        target = self.compare_target()
        if target is None:
            return
        history = History(self.report_dir() / HISTORY_FILE)
        if target == "last":
            base = history.last(like=report)
            if base is None:
                self.notes.append("--compare-to last: no earlier run of this model, profile and "
                                  "item limit in the history; nothing to compare")
                return
        elif target.endswith(".json"):
            base = load_run(target)
        else:
            base = history.load(target)
        report.comparison = compare(report, base, self.config.getoption("--regression-tolerance"))
        self.regressed = bool(report.comparison.regressions)

    def write(self, report: RunReport) -> None:
        from editgate.report.output import write_run

        self.paths = write_run(report, self.report_dir())

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.paths and not self.notes:
            return
        from rich.console import Console

        from editgate.summary import render_comparison

        color = terminalreporter.hasmarkup
        width = terminalreporter._tw.fullwidth
        buffer = io.StringIO()
        console = Console(file=buffer, width=max(width, 200) if not color else width,
                          force_terminal=color, no_color=not color, highlight=False)
        if self.report is not None and self.report.comparison is not None:
            render_comparison(self.report.comparison, buffer, width=width, color=color,
                              fail=bool(self.config.getoption("--fail-on-regression")))
        for note in self.notes:
            console.print(note)
        if self.paths:
            console.print(f"[bold]report[/] {self._rel(self.paths['html'])} · json "
                          f"{self._rel(self.paths['json'])} · history {self._rel(self.paths['history'])}"
                          f" (run {self.report.run_id if self.report else '?'})", soft_wrap=True)
        terminalreporter.write(buffer.getvalue())

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin(PLUGIN_NAME) or config.option.help:
        return
    plugin = ReportPlugin(config)
    if not hasattr(config, "workerinput"):
        plugin.check_options()
    config.pluginmanager.register(plugin, PLUGIN_NAME)


def run_report(config: pytest.Config) -> RunReport | None:
    """The run report of this session, once built (None before, on workers, or without gates)."""
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    return getattr(plugin, "report", None)


def comparison_of(config: pytest.Config) -> Comparison | None:
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    report = getattr(plugin, "report", None)
    return report.comparison if report is not None else None
