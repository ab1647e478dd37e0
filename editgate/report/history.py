"""The run history: one row per run in ``reports/history.sqlite``.

Why SQLite rather than a JSONL file: several runs (CI shards, a matrix of editors, a developer's
terminal) may finish at the same moment. SQLite serialises their appends through its own locking
(``BEGIN IMMEDIATE`` + a busy timeout), a killed writer leaves no torn line behind (the
transaction rolls back), and "the last comparable run" or "run 20250112T…" is an indexed query
instead of a scan of an ever-growing file. It is in the standard library and the file is a single
artifact to cache or upload in CI. Each row keeps the run's report without per-item results
(those stay in the run's JSON file), so comparisons work even after old JSON files are deleted.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from editgate.report.schema import RunReport, SchemaError, dumps_run, parse_run

HISTORY_FILE = "history.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    git_commit TEXT,
    git_dirty INTEGER,
    model TEXT NOT NULL,
    model_fingerprint TEXT,
    profile TEXT NOT NULL,
    item_limit INTEGER,
    editors TEXT NOT NULL,          -- JSON {editor: version}
    passed INTEGER NOT NULL,
    report_path TEXT,               -- the run's JSON report (may have been deleted since)
    report TEXT NOT NULL            -- the report without per-item results (editgate.run JSON)
);
CREATE INDEX IF NOT EXISTS runs_by_config ON runs (model, profile, item_limit, created);
"""


@dataclass(frozen=True)
class HistoryEntry:
    run_id: str
    created: str
    git_commit: str | None
    git_dirty: bool | None
    model: str
    profile: str
    limit: int | None
    editors: dict[str, str]
    passed: bool
    report_path: str | None


class History:
    """Append-only store of runs; safe for concurrent writers on one machine."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if write:
                conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
            yield conn
            if write:
                conn.execute("COMMIT")
        except BaseException:
            if write and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def append(self, report: RunReport, report_path: Path | None = None) -> None:
        env = report.environment
        row = (report.run_id, report.created, env.git_commit,
               None if env.git_dirty is None else int(env.git_dirty), env.model,
               env.model_fingerprint, env.profile, env.limit,
               json.dumps({name: info.version for name, info in env.editors.items()}),
               int(report.passed), str(report_path) if report_path else None,
               dumps_run(report.without_results(), indent=None))
        with self._connect(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        if not self.path.exists():
            return []
        with self._connect() as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def entries(self, limit: int | None = None) -> list[HistoryEntry]:
        """Runs, newest first."""
        sql = ("SELECT run_id, created, git_commit, git_dirty, model, profile, item_limit, editors,"
               " passed, report_path FROM runs ORDER BY created DESC, run_id DESC")
        rows = self._rows(sql + (f" LIMIT {int(limit)}" if limit else ""))
        return [HistoryEntry(r[0], r[1], r[2], None if r[3] is None else bool(r[3]), r[4], r[5],
                             r[6], json.loads(r[7]), bool(r[8]), r[9]) for r in rows]

    def load(self, run_id: str) -> RunReport:
        """A stored run by id or unique id prefix (without its per-item results)."""
        rows = self._rows("SELECT run_id, report FROM runs WHERE run_id LIKE ? ORDER BY run_id",
                          (run_id.replace("%", "") + "%",))
        exact = [r for r in rows if r[0] == run_id]
        if exact:
            rows = exact
        if not rows:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        if len(rows) > 1:
            raise KeyError(f"run id prefix {run_id!r} is ambiguous: "
                           f"{', '.join(r[0] for r in rows[:5])}")
        return _parse(rows[0][1], f"{self.path}:{rows[0][0]}")

    def last(self, like: RunReport | None = None, *, before: str | None = None) -> RunReport | None:
        """The newest run (with ``like``: of the same model, profile and item limit — a run of
        another configuration is no baseline), optionally created before ``before``."""
        sql, params = "SELECT run_id, report FROM runs WHERE 1=1", []
        if like is not None:
            env = like.environment
            sql += " AND model = ? AND profile = ? AND item_limit IS ?"
            params += [env.model, env.profile, env.limit]
            sql += " AND run_id != ?"
            params.append(like.run_id)
        if before is not None:
            sql += " AND created <= ?"
            params.append(before)
        rows = self._rows(sql + " ORDER BY created DESC, run_id DESC LIMIT 1", tuple(params))
        return _parse(rows[0][1], f"{self.path}:{rows[0][0]}") if rows else None


def _parse(text: str, source: str) -> RunReport:
    try:
        return parse_run(json.loads(text), source)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{source}: corrupted history row: {exc}") from None
