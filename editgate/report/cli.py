"""``python -m editgate.report``: show, compare, re-render and merge stored runs.

A RUN is a run JSON file, a run id (or unique prefix) from the history, or ``last``. Runs found
only in the history (their JSON deleted) have no per-item results: every view works, the HTML
drill-down falls back to the five worst items each gate kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from editgate.report.history import HISTORY_FILE, History
from editgate.report.merge import MergeError
from editgate.report.schema import RunReport, SchemaError, load_run


def resolve(run: str, report_dir: Path) -> RunReport:
    if run.endswith(".json") or Path(run).is_file():
        return load_run(run)
    history = History(report_dir / HISTORY_FILE)
    if run == "last":
        report = history.last()
        if report is None:
            raise KeyError(f"the history {history.path} holds no run")
    else:
        report = history.load(run)
    stored = report_dir / "runs" / f"{report.run_id}.json"
    return load_run(stored) if stored.is_file() else report


def _cmd_show(args: argparse.Namespace) -> int:
    from editgate.summary import render_comparison, render_run

    report = resolve(args.run, args.report_dir)
    color = sys.stdout.isatty()
    print(f"run {report.run_id} · {report.created} · commit {report.environment.git_commit or '—'}")
    render_run(report, sys.stdout, width=args.width, color=color)
    if report.comparison is not None:
        render_comparison(report.comparison, sys.stdout, width=args.width, color=color)
    return 0 if report.passed else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    from editgate.report.compare import compare
    from editgate.summary import render_comparison

    current = resolve(args.run, args.report_dir)
    if args.base:
        base = resolve(args.base, args.report_dir)
    else:
        base = History(args.report_dir / HISTORY_FILE).last(like=current, before=current.created)
        if base is None:
            print(f"no earlier comparable run than {current.run_id} in the history")
            return 0
    comparison = compare(current, base, args.tolerance)
    render_comparison(comparison, sys.stdout, width=args.width, color=sys.stdout.isatty(),
                      fail=args.fail_on_regression)
    return 1 if comparison.regressions and args.fail_on_regression else 0


def _cmd_html(args: argparse.Namespace) -> int:
    from editgate.cache import atomic_write_text
    from editgate.report.html import render_html

    report = resolve(args.run, args.report_dir)
    out = args.output or Path(f"{report.run_id}.html")
    atomic_write_text(out, render_html(report))
    out.chmod(0o644)
    print(out)
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    entries = History(args.report_dir / HISTORY_FILE).entries(args.limit)
    for e in entries:
        editors = ", ".join(f"{k} v{v}" for k, v in e.editors.items())
        commit = (e.git_commit or "—")[:10] + ("+" if e.git_dirty else "")
        limit = f" limit {e.limit}" if e.limit else ""
        print(f"{e.run_id}  {'pass' if e.passed else 'FAIL'}  {commit}  {e.model} {e.profile}"
              f"{limit}  [{editors}]")
    if not entries:
        print(f"no runs in {args.report_dir / HISTORY_FILE}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from editgate.report.merge import merge
    from editgate.report.output import new_run_id, write_run
    from editgate.summary import render_run

    shards = [resolve(run, args.report_dir) for run in args.runs]
    report = merge(shards, run_id=new_run_id(), sources=args.runs)
    paths = write_run(report, args.output_dir or args.report_dir)
    render_run(report, sys.stdout, width=args.width, color=sys.stdout.isatty())
    print(f"merged {len(shards)} shard runs into {report.run_id}: {paths['json']}, {paths['html']}")
    return int(report.exit_status or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editgate.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-dir", type=Path, default=Path("reports"),
                        help="folder with runs/ and history.sqlite (default: reports)")
    parser.add_argument("--width", type=int, default=120, help="terminal width for tables")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="the terminal summary of a stored run")
    show.add_argument("run")
    show.set_defaults(func=_cmd_show)
    comp = commands.add_parser("compare", help="what moved between two runs")
    comp.add_argument("run", help="the newer run")
    comp.add_argument("base", nargs="?", help="the earlier run (default: the last comparable one)")
    comp.add_argument("--tolerance", type=float, help="Δ drop tolerated (default: each gate's own)")
    comp.add_argument("--fail-on-regression", action="store_true", help="exit 1 on a regression")
    comp.set_defaults(func=_cmd_compare)
    html = commands.add_parser("html", help="(re-)render a run's HTML report")
    html.add_argument("run")
    html.add_argument("-o", "--output", type=Path, help="output file (default: <run id>.html)")
    html.set_defaults(func=_cmd_html)
    merge = commands.add_parser(
        "merge", help="one run report (JSON, HTML, history, exit status) from a sharded matrix")
    merge.add_argument("runs", nargs="+", help="the shards' runs (run JSON files or ids)")
    merge.add_argument("-o", "--output-dir", type=Path,
                       help="where the merged run goes (default: --report-dir)")
    merge.set_defaults(func=_cmd_merge)
    hist = commands.add_parser("history", help="list stored runs, newest first")
    hist.add_argument("-n", "--limit", type=int, default=20)
    hist.set_defaults(func=_cmd_history)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (KeyError, SchemaError, MergeError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2
