"""Terminal output: transient rich progress bars that coexist with pytest's own output."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ProgressBars:
    """``bars(description, total)`` → ``advance(n)``; the bar disappears when it completes.

    pytest captures output while fixtures and tests run, so each redraw briefly suspends capture
    (``suspend``), and bars refresh only when work advances: no background thread writes into
    pytest's report lines.
    """

    def __init__(self, suspend: Callable[[], contextlib.AbstractContextManager] | None = None,
                 enabled: bool = True) -> None:
        self.enabled = enabled and sys.__stderr__ is not None and sys.__stderr__.isatty()
        self.suspend = suspend or contextlib.nullcontext
        self.console = Console(file=sys.__stderr__, stderr=True)

    def __call__(self, description: str, total: float) -> Callable[[float], None]:
        if not self.enabled or total <= 0:
            return lambda n: None
        progress = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                            transient=True, auto_refresh=False)
        task = progress.add_task(description, total=total)
        state = {"started": False, "done": 0.0}

        def advance(n: float) -> None:
            with self._drawing():
                if not state["started"]:
                    progress.start()
                    state["started"] = True
                state["done"] += n
                progress.update(task, completed=min(state["done"], total))
                progress.refresh()
                if state["done"] >= total:
                    progress.stop()

        return advance

    @contextlib.contextmanager
    def _drawing(self) -> Iterator[None]:
        with self.suspend():
            yield
