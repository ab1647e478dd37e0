"""The data layer: locate the data directory, read JSONL with schema checks, fall back to the hub.

Layout (as in ``../shared/data``): one folder per dataset, JSONL files inside, one README each.
Every record comes back with the file and line it came from, so an error anywhere downstream
can still say exactly where the bad input is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editgate.cache import file_sha256
from editgate.errors import DataError, DataMissing

DATA_DIR_ENV = "EDITGATE_DATA_DIR"
OFFLINE_ENVS = ("EDITGATE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def project_root() -> Path:
    """The source checkout this package runs from (the folder holding pyproject.toml)."""
    return Path(__file__).resolve().parent.parent


def resolve_data_dir(option: str | os.PathLike[str] | None = None, base: Path | None = None) -> Path:
    """Data directory by precedence: ``$EDITGATE_DATA_DIR`` > explicit option/ini > ``../shared/data``.

    Relative paths are taken relative to ``base`` (the pytest rootdir or the project root).
    """
    base = base or project_root()
    chosen = os.environ.get(DATA_DIR_ENV) or option or "../shared/data"
    path = Path(chosen).expanduser()
    if not path.is_absolute():
        path = (base / path).resolve()
    if not path.is_dir():
        raise DataError(
            f"data directory does not exist (set --data-dir, the 'editgate_data_dir' ini key "
            f"or ${DATA_DIR_ENV})", path=path,
        )
    return path


@dataclass(frozen=True)
class Field:
    """One expected JSON field: its type(s), and whether an empty value is an error."""

    name: str
    types: type | tuple[type, ...]
    required: bool = True
    nonempty: bool = False


@dataclass(frozen=True)
class Record:
    """One JSONL object plus where it came from."""

    data: Mapping[str, Any]
    path: str
    line: int

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, path=self.path, line=self.line, field=field)


def _type_name(types: type | tuple[type, ...]) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__


def validate(record: Record, schema: Sequence[Field]) -> None:
    for spec in schema:
        if spec.name not in record.data:
            if spec.required:
                raise record.error("missing", field=spec.name)
            continue
        value = record.data[spec.name]
        # bool is an int in Python; a JSON `true` where a number is expected is still wrong.
        wrong_bool = isinstance(value, bool) and bool not in (
            spec.types if isinstance(spec.types, tuple) else (spec.types,))
        if wrong_bool or not isinstance(value, spec.types):
            raise record.error(
                f"expected {_type_name(spec.types)}, got {type(value).__name__} ({value!r:.60})",
                field=spec.name,
            )
        if spec.nonempty and (value is None or (hasattr(value, "__len__") and len(value) == 0)
                              or (isinstance(value, str) and not value.strip())):
            raise record.error("must not be empty", field=spec.name)


def check_unique(records: Sequence[Record], key: Callable[[Record], str], field: str) -> None:
    """Raise on the first record whose ``key`` repeats an earlier one (naming both lines)."""
    seen: dict[str, int] = {}
    for record in records:
        value = key(record)
        if value in seen:
            raise record.error(f"duplicate id {value!r} (first on line {seen[value]})", field=field)
        seen[value] = record.line


def read_jsonl(path: Path, schema: Sequence[Field] = ()) -> list[Record]:
    """Read and validate a JSONL file; the first bad line raises a :class:`DataError`."""
    if not path.is_file():
        raise DataMissing("file not found", path=path)
    records: list[Record] = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                # utf-8-sig: a byte-order mark at the start of the file is not part of the JSON.
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"not valid UTF-8 (byte {exc.start})", path=path,
                                line=line_no) from None
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON ({exc.msg} at column {exc.colno})",
                                path=path, line=line_no) from None
            if not isinstance(data, dict):
                raise DataError(f"expected a JSON object, got {type(data).__name__}",
                                path=path, line=line_no)
            record = Record(data, str(path), line_no)
            validate(record, schema)
            records.append(record)
    if not records:
        raise DataError("file holds no records", path=path)
    return records


@dataclass(frozen=True)
class HubSource:
    """The same dataset on the Hugging Face hub, mapped to the local record layout."""

    path: str
    split: str
    name: str | None = None
    convert: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda row: row)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under the data directory, its schema, and its hub twin."""

    folder: str
    filename: str
    schema: tuple[Field, ...]
    hub: HubSource | None = None

    def local_path(self, data_dir: Path) -> Path:
        return data_dir / self.folder / self.filename


def network_allowed() -> bool:
    return not any(os.environ.get(env, "0") not in ("", "0", "false") for env in OFFLINE_ENVS)


@dataclass(frozen=True)
class LoadedDataset:
    records: list[Record]
    fingerprint: str  # content hash of the source, part of every cache key downstream


def load_dataset(spec: DatasetSpec, data_dir: Path) -> LoadedDataset:
    """Local JSONL if present; else the hub through ``datasets`` when the network is allowed."""
    path = spec.local_path(data_dir)
    if path.is_file():
        return LoadedDataset(read_jsonl(path, spec.schema), file_sha256(path))
    if spec.hub is None or not network_allowed():
        raise DataMissing(
            "file not found" + ("" if spec.hub is None else " (hub fallback disabled: offline)"),
            path=path,
        )
    return _load_from_hub(spec)


def _load_from_hub(spec: DatasetSpec) -> LoadedDataset:
    import hashlib

    import datasets  # imported lazily: slow, and unused offline

    hub = spec.hub
    assert hub is not None
    try:
        rows = datasets.load_dataset(hub.path, hub.name, split=hub.split)
    except Exception as exc:  # network, auth, missing dataset: one clear line
        raise DataError(f"could not load {hub.path}:{hub.split} from the hub: {exc}",
                        path=spec.folder) from None
    source = f"hub:{hub.path}/{hub.name or ''}:{hub.split}"
    sha = hashlib.sha256()
    records = []
    for index, row in enumerate(rows):
        data = hub.convert(dict(row))
        record = Record(data, source, index + 1)
        validate(record, spec.schema)
        records.append(record)
        sha.update(json.dumps(data, sort_keys=True, default=str).encode())
    return LoadedDataset(records, sha.hexdigest())
