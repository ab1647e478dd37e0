"""The end-of-run summary table: one row per edited case, one column per ability."""

from __future__ import annotations

from typing import IO

from rich.console import Console
from rich.table import Table

from editgate.edit_success import SUCCESS_METRICS


def _cell(text: str, passed: bool) -> str:
    return f"[green]{text}[/]" if passed else f"[bold red]{text}[/]"


def render_summary(plugin, out: IO[str], *, width: int = 120, color: bool = True) -> None:
    cases = sorted({key[0] for key in plugin.gates} | {key[0] for key in plugin.success}
                   | set(plugin.edit_errors))
    pairs = sorted({(a, m) for (_, a, m) in plugin.gates})
    table = Table(title="editgate · ability retention after editing", title_justify="left",
                  caption="cells: baseline → edited (Δ); red = gate failed", caption_justify="left")
    table.add_column("edit case", style="bold", no_wrap=True)
    for ability, metric in pairs:
        table.add_column(f"{ability}\n{metric}", justify="right", no_wrap=True)
    for metric in SUCCESS_METRICS:
        table.add_column(metric[:5] + ".", justify="right")
    table.add_column("edit s", justify="right")
    for case in cases:
        row = [case]
        for ability, metric in pairs:
            result = plugin.gates.get((case, ability, metric))
            row.append("" if result is None else _cell(
                f"{result.baseline:.3f}→{result.edited:.3f} {result.delta:+.3f}",
                result.passed))
        for metric in SUCCESS_METRICS:
            outcome = plugin.success.get((case, metric))
            row.append("" if outcome is None else _cell(f"{outcome[0]:.2f}", outcome[2]))
        row.append(f"{plugin.edit_seconds.get(case, 0.0):.1f}")
        table.add_row(*row)
    # Logs (CI) are not width-limited: let the table take the room it needs there.
    console = Console(file=out, width=width if color else max(width, 200), force_terminal=color,
                      no_color=not color)
    console.print(table)
    for case, error in sorted(plugin.edit_errors.items()):
        console.print(f"[bold red]edit failed[/] {case}: {error}")
