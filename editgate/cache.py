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
    # Missing, or present but unreadable: recompute under the lock (never trust a bad file).
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


def _json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def save_json(value: Any, path: Path) -> None:
    """Write ``{"version", "sha256", "value"}``: the digest lets a reader reject a corrupted file."""
    payload = {"version": JSON_CACHE_VERSION, "sha256": _json_digest(value), "value": value}
    path.write_text(json.dumps(payload), "utf-8")


def load_json(path: Path) -> Any:
    """Read :func:`save_json` output; raises on a version change, truncation or bit flip."""
    payload = json.loads(path.read_text("utf-8"))
    if payload.get("version") != JSON_CACHE_VERSION:
        raise ValueError("cache format version changed")
    if payload.get("sha256") != _json_digest(payload["value"]):
        raise ValueError("cache file content does not match its digest")
    return payload["value"]


def json_cache(path: Path, compute: Callable[[], Any]) -> Any:
    """:func:`get_or_compute` for JSON-serialisable values, with version and digest checks."""
    return get_or_compute(path, compute, save_json, load_json)


def tensors_digest(tensors: dict[str, Any]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of a dict of tensors."""
    import torch

    sha = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def save_tensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file whose metadata carries a digest of its tensors (checked by load_tensors)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={**(metadata or {}), "sha256": tensors_digest(tensors)})


def load_tensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a :func:`save_tensors` file; raises if the content was corrupted."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(str(path))
    if metadata.get("sha256") != tensors_digest(tensors):
        raise ValueError(f"{path}: tensor content does not match its digest")
    return tensors, metadata


def cache_usage() -> dict[str, tuple[int, int]]:
    """Files and bytes per cache kind (``editgate cache info``)."""
    usage: dict[str, tuple[int, int]] = {}
    root = cache_root()
    if not root.is_dir():
        return usage
    for kind in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [f for f in kind.rglob("*") if f.is_file()]
        usage[kind.name] = (len(files), sum(f.stat().st_size for f in files))
    return usage


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
