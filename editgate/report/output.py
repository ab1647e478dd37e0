"""Where a finished run goes: its JSON and HTML under ``runs/``, the ``latest`` copies, the history.

Shared by the pytest plugin (one session's run) and ``python -m editgate.report merge`` (the run
of a sharded matrix), so both leave the same files::

    <report dir>/runs/<run id>.json     the run in the versioned editgate.run schema
    <report dir>/runs/<run id>.html     the self-contained HTML report
    <report dir>/latest.json|html       copies of the newest run (stable paths for CI artifacts)
    <report dir>/history.sqlite         one row per run (see editgate.report.history)
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

from editgate.cache import atomic_write_text
from editgate.report.history import HISTORY_FILE, History
from editgate.report.schema import RunReport, save_run


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id(moment: datetime | None = None) -> str:
    """Sortable by time, unique across concurrent runs: ``20250112T101530Z-3fa2c1``."""
    return f"{(moment or now()).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def write_run(report: RunReport, folder: Path) -> dict[str, Path]:
    """Write ``report`` into ``folder``; returns the paths written (json, html, history)."""
    from editgate.report.html import render_html  # only at the end of a run, not at pytest start

    runs = folder / "runs"
    json_path = save_run(report, runs / f"{report.run_id}.json")
    html_path = runs / f"{report.run_id}.html"
    atomic_write_text(html_path, render_html(report))
    for path in (json_path, html_path):
        path.chmod(0o644)  # written through a private temp file: make them readable like any output
    for source, name in ((json_path, "latest.json"), (html_path, "latest.html")):
        with contextlib.suppress(OSError):
            shutil.copyfile(source, folder / name)
    History(folder / HISTORY_FILE).append(report, json_path)
    return {"json": json_path, "html": html_path, "history": folder / HISTORY_FILE}
