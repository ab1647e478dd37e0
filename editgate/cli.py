"""``editgate`` command line: what is registered, cache housekeeping, and the gate itself.

    editgate list                   models, editors, abilities, regimes
    editgate cache info             disk use per cache kind
    editgate cache clean [KIND...]  delete the cache (or some kinds of it)
    editgate gate [PYTEST ARGS]     run the gate suite (same as `pytest ability_tests ...`)
    editgate power [OPTIONS]        detection-power study of the gate (see editgate.power)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from editgate.errors import EditgateError


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"


def cmd_list(console: Console) -> int:
    from editgate.registry import ABILITIES, EDITORS, MODELS

    table = Table(title="editgate registry", title_justify="left")
    table.add_column("kind")
    table.add_column("names")
    table.add_row("models", ", ".join(MODELS.names()) + ", or any local directory / hub id")
    table.add_row("editors", ", ".join(EDITORS.names()))
    table.add_row("abilities", ", ".join(ABILITIES.names()))
    table.add_row("regimes", "single, sequential-N, batch-N, batch-B-sequential-N")
    console.print(table)
    return 0


def cmd_cache(console: Console, action: str, kinds: Sequence[str]) -> int:
    from editgate.cache import cache_root, cache_usage

    root = cache_root()
    usage = cache_usage()
    if action == "info":
        table = Table(title=f"editgate cache · {root}", title_justify="left")
        for column in ("kind", "files", "size"):
            table.add_column(column, justify="right" if column != "kind" else "left")
        for kind, (files, size) in usage.items():
            table.add_row(kind, str(files), _human(size))
        table.add_row("[bold]total[/]", str(sum(f for f, _ in usage.values())),
                      _human(sum(s for _, s in usage.values())))
        console.print(table)
        return 0
    unknown = sorted(set(kinds) - set(usage))
    if unknown:
        raise EditgateError(f"no cache kind {unknown}; present: {', '.join(usage) or '(none)'}")
    targets = [root / k for k in kinds] if kinds else [root]
    freed = sum(usage[k][1] for k in kinds) if kinds else sum(s for _, s in usage.values())
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
    console.print(f"removed {', '.join(map(str, targets))} ({_human(freed)})")
    return 0


def cmd_gate(args: Sequence[str]) -> int:
    import pytest

    return int(pytest.main(["ability_tests", *args]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="editgate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered models, editors, abilities")
    cache = sub.add_parser("cache", help="cache housekeeping")
    cache.add_argument("action", choices=("info", "clean"))
    cache.add_argument("kinds", nargs="*", help="cache kinds to clean (default: all)")
    gate = sub.add_parser("gate", help="run the gate suite; other arguments go to pytest")
    gate.add_argument("pytest_args", nargs=argparse.REMAINDER)
    power = sub.add_parser("power", help="detection power of the gate (editgate power --help)",
                           add_help=False)
    power.add_argument("power_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.command == "list":
            return cmd_list(console)
        if args.command == "cache":
            return cmd_cache(console, args.action, args.kinds)
        if args.command == "power":
            from editgate.power import main as power_main

            return power_main(args.power_args)
        return cmd_gate(args.pytest_args)
    except EditgateError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
