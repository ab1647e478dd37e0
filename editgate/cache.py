"""On-disk caches: content-keyed, written atomically, safe under parallel pytest workers.

Every cached artifact (converted models, covariance statistics, baseline scores, deltas) lives at
``cache_root() / <kind> / <key>.<ext>`` where ``key`` is a digest of *everything* the artifact
depends on (see :func:`cache_key`). Writers take an exclusive ``flock`` on ``<path>.lock`` so two
xdist workers asking for the same key compute it once; the file itself appears through
``os.replace`` of a fully written temp file, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CACHE_ENV = "EDITGATE_CACHE_DIR"


def cache_root() -> Path:
    """``$EDITGATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/editgate``, else ``~/.cache/editgate``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "editgate"


def cache_key(**parts: Any) -> str:
    """A short stable digest of keyword parts (JSON-canonicalised; order-independent)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(kind: str, key: str, suffix: str) -> Path:
    return cache_root() / kind / f"{key}{suffix}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<path>.lock`` (released automatically if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def get_or_compute(
    path: Path,
    compute: Callable[[], T],
    save: Callable[[T, Path], None],
    load: Callable[[Path], T],
) -> T:
    """Load ``path`` if it is present and readable; otherwise compute, save atomically and return.

    A file that fails to load (truncated, corrupted, old format) is recomputed, never trusted.
    The lock makes concurrent callers wait for the first one instead of computing twice.
    """
    if path.exists():
        with contextlib.suppress(Exception):
            return load(path)
    with file_lock(path):
        if path.exists():  # another worker may have finished while we waited
            try:
                return load(path)
            except Exception:
                path.unlink(missing_ok=True)
        value = compute()
        atomic_write(path, lambda tmp: save(value, tmp))
        return value


JSON_CACHE_VERSION = 1


def json_cache(path: Path, compute: Callable[[], Any]) -> Any:
    """:func:`get_or_compute` for JSON-serialisable values, with a format-version guard."""

    def save(value: Any, tmp: Path) -> None:
        tmp.write_text(json.dumps({"version": JSON_CACHE_VERSION, "value": value}), "utf-8")

    def load(p: Path) -> Any:
        payload = json.loads(p.read_text("utf-8"))
        if payload.get("version") != JSON_CACHE_VERSION:
            raise ValueError("cache format version changed")
        return payload["value"]

    return get_or_compute(path, compute, save, load)


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so large weights are hashed once."""
    stat = path.stat()
    memo = cache_path("hash-memo", cache_key(path=str(path.resolve()), size=stat.st_size,
                                             mtime=stat.st_mtime_ns), ".txt")
    if memo.exists():
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    digest = sha.hexdigest()
    atomic_write_text(memo, digest)
    return digest
