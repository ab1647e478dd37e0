"""The run report as Python objects, and its versioned JSON form (``editgate.run``, version 1).

A :class:`RunReport` is everything one ``pytest ability_tests`` session decided: the environment
it ran in, every edited case, every gate (with its bootstrap CI), every edit-success rate (with a
Wilson CI), the golden-baseline checks, the edit budgets, timings, every per-item result, and —
when the run was compared with an earlier one — what moved.

:func:`save_run` writes it as JSON; :func:`load_run` reads it back and validates it: the schema
name and version must match, every field must have the documented type. The field-by-field
description is in the README ("Reports → JSON").

Compatibility rule: adding an optional field keeps ``SCHEMA_VERSION``; renaming, removing or
changing the meaning of a field bumps it, and :func:`load_run` refuses versions it does not know.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SCHEMA = "editgate.run"
SCHEMA_VERSION = 1

T = TypeVar("T")


class SchemaError(ValueError):
    """A run file that is not a valid ``editgate.run`` document of a version this code reads."""


# ------------------------------------------------------------------------- environment


@dataclass
class MetricInfo:
    name: str
    kind: str = "continuous"  # "paper" (the paper's metric) | "continuous" (likelihood-based)
    chance: float | None = None  # score of a random guesser (None: not defined)
    unit: str = ""  # "" for fractions in [0, 1]; "nats" for log-probabilities


@dataclass
class AbilityInfo:
    name: str
    version: str = "1"
    metrics: list[MetricInfo] = field(default_factory=list)
    code: str | None = None  # fingerprint of its source and what it imports (editgate.fingerprint)
    note: str | None = None  # how to read its scores in this run (e.g. glue_rte's inverted labels)


@dataclass
class EditorInfo:
    name: str
    version: str = "1"
    source_sha256: str | None = None  # of the editor's source file: changes even without a bump
    can_batch: bool = False
    code: str | None = None  # fingerprint of its source and what it imports (editgate.fingerprint)


@dataclass
class Environment:
    model: str
    profile: str
    model_fingerprint: str | None = None
    limit: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    eval_dtype: str = "float32"  # precision of the scoring forwards
    generation_dtype: str = "float32"  # precision of greedy generation's forwards
    seed: int = 0
    edit_source: str = "counterfact"
    data_dir: str = ""
    git_commit: str | None = None
    git_dirty: bool | None = None
    git_branch: str | None = None
    python: str = ""
    platform: str = ""
    hostname: str = ""
    cpu_count: int | None = None
    libraries: dict[str, str] = field(default_factory=dict)
    editors: dict[str, EditorInfo] = field(default_factory=dict)
    abilities: dict[str, AbilityInfo] = field(default_factory=dict)
    tolerances_file: str | None = None
    tolerances_sha256: str | None = None
    hparams_sha256: dict[str, str] = field(default_factory=dict)
    hparam_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    xdist_workers: int = 0
    # What selected the numerical kernels (editgate.fingerprint.compute_environment): device,
    # torch/transformers versions, CPU capability and instruction sets, threads.
    compute: dict[str, str] = field(default_factory=dict)
    attention_fallback: str | None = None  # SDPA backend forced where a bf16 kernel is missing


# ------------------------------------------------------------------------- decisions


@dataclass
class Case:
    """One edited state: ``editor`` under ``regime`` after ``checkpoint`` edits."""

    id: str
    editor: str
    regime: str
    checkpoint: int
    edit_seconds: float = 0.0  # editor compute time; 0 when every delta came from the cache
    new_edits: int = 0  # edits this case added to its chain in this run (for seconds per edit)
    cached: bool = False
    error: str | None = None
    state_key: str = ""
    passed: bool = True  # no edit error and every ability gate of the case passed

    @property
    def seconds_per_edit(self) -> float | None:
        if self.cached or self.error or not self.new_edits:
            return None
        return self.edit_seconds / self.new_edits


@dataclass
class WorstItem:
    item_id: str
    baseline: float
    edited: float
    prediction_before: str
    prediction_after: str
    gold: str


@dataclass
class Gate:
    """One (case, ability, metric) decision: the paired Δ, its CI and the tolerance."""

    case: str
    ability: str
    metric: str
    n_items: int
    baseline: float
    edited: float
    delta: float
    ci_low: float
    ci_high: float
    tolerance: float
    passed: bool
    baseline_ci: list[float] | None = None  # 95% bootstrap CI of the baseline mean
    edited_ci: list[float] | None = None  # 95% bootstrap CI of the edited mean
    worst: list[WorstItem] = field(default_factory=list)
    baseline_results: str | None = None  # key into RunReport.results[ability]
    edited_results: str | None = None

    @property
    def key(self) -> str:
        return f"{self.case}/{self.ability}.{self.metric}"


@dataclass
class Success:
    """An edit-success rate of one case (efficacy, paraphrase, neighborhood, ...)."""

    case: str
    metric: str
    rate: float
    threshold: float
    passed: bool
    probes: int
    ci_low: float | None = None  # 95% Wilson interval
    ci_high: float | None = None
    failed: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.case}/{self.metric}"


@dataclass
class Baseline:
    """The golden-baseline check of one ability on the unedited model."""

    ability: str
    passed: bool
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Budget:
    """Edits an editor survives under a sequential regime before any ability gate fails."""

    editor: str
    regime: str
    budget: int  # largest checkpoint up to which every gate passed (0: not even the first)
    max_checkpoint: int  # largest checkpoint evaluated: budget == max_checkpoint means "≥"
    checkpoints: list[int] = field(default_factory=list)
    # Found by --budget-search: the smallest failing count it scored (None: none failed) and the
    # edits per call, the finest a chain allows; a grid's budget leaves them unset.
    first_failure: int | None = None
    step: int | None = None

    @property
    def key(self) -> str:
        return f"{self.editor}/{self.regime}"

    @property
    def text(self) -> str:
        if self.budget >= self.max_checkpoint and self.first_failure is None:
            return f"≥{self.budget}"
        if self.first_failure is not None and self.first_failure - self.budget > (self.step or 0):
            return f"{self.budget} (fails by {self.first_failure})"
        return str(self.budget)


@dataclass
class ItemRecord:
    id: str
    prediction: str
    gold: str
    metrics: dict[str, float]


@dataclass
class Timings:
    session_seconds: float = 0.0  # wall time of the pytest session
    tests_seconds: float = 0.0  # sum of test durations (setup + call + teardown)
    by_case: dict[str, float] = field(default_factory=dict)  # test time per case id
    edit_seconds: dict[str, float] = field(default_factory=dict)  # editor compute time per editor
    seconds_per_edit: dict[str, float | None] = field(default_factory=dict)  # None: all cached
    process: dict[str, float] = field(default_factory=dict)  # the session's own timers, if local
    benchmarks: list[dict[str, Any]] = field(default_factory=list)  # latest pytest-benchmark run


@dataclass
class Tally:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0


@dataclass
class Change:
    """One difference between two runs (see :mod:`editgate.report.compare`)."""

    kind: str  # gate | success | budget | case | baseline | environment | timing
    key: str
    verdict: str  # regressed | improved | moved | added | removed | changed
    before: Any = None
    after: Any = None
    change: float | None = None
    note: str = ""


@dataclass
class Comparison:
    base_run: str
    base_created: str
    base_commit: str | None = None
    rule: str = ""  # the regression rule applied, in words
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0  # gates/rates/budgets compared and found identical
    # What of the kernels and precisions differs between the runs (empty: the same environment).
    environment_changed: list[str] = field(default_factory=list)
    # Only the environment differs (same model, data, editor and ability code, hparams,
    # tolerances): every moved verdict is the kernels' doing, reported as "environment".
    environment_only: bool = False

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regressed"]

    @property
    def improvements(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "improved"]


@dataclass
class RunReport:
    run_id: str
    created: str  # ISO 8601, UTC, when the session started
    environment: Environment
    finished: str = ""
    exit_status: int | None = None
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    cases: list[Case] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    success: list[Success] = field(default_factory=list)
    baselines: list[Baseline] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    tests: Tally = field(default_factory=Tally)
    # results[ability][state] = per-item results; state "base" is the unedited model, any other
    # key is a case's state_key (cases that share weights share results).
    results: dict[str, dict[str, list[ItemRecord]]] = field(default_factory=dict)
    comparison: Comparison | None = None

    # ---------------------------------------------------------------- views

    @property
    def passed(self) -> bool:
        return (all(c.passed for c in self.cases) and all(g.passed for g in self.gates)
                and all(s.passed for s in self.success) and all(b.passed for b in self.baselines))

    def case(self, case_id: str) -> Case | None:
        return next((c for c in self.cases if c.id == case_id), None)

    def editors(self) -> list[str]:
        return list(dict.fromkeys(c.editor for c in self.cases))

    def ability_metrics(self) -> list[tuple[str, str]]:
        """(ability, metric) pairs in the order the gates ran (each ability's paper metric first)."""
        return list(dict.fromkeys((g.ability, g.metric) for g in self.gates))

    def abilities(self) -> list[str]:
        return list(dict.fromkeys(g.ability for g in self.gates))

    def success_metrics(self) -> list[str]:
        return list(dict.fromkeys(s.metric for s in self.success))

    def gate(self, case_id: str, ability: str, metric: str) -> Gate | None:
        return next((g for g in self.gates
                     if (g.case, g.ability, g.metric) == (case_id, ability, metric)), None)

    def items(self, ability: str, state: str | None) -> list[ItemRecord]:
        return self.results.get(ability, {}).get(state or "", [])

    def metric_info(self, ability: str, metric: str) -> MetricInfo:
        info = self.environment.abilities.get(ability)
        for candidate in info.metrics if info else ():
            if candidate.name == metric:
                return candidate
        return MetricInfo(metric)

    def without_results(self) -> RunReport:
        """A copy without per-item results (what the history stores)."""
        return dataclasses.replace(self, results={})


# ------------------------------------------------------------------------- (de)serialisation


def to_json(value: Any) -> Any:
    """Dataclasses → plain JSON values; non-finite floats → ``null`` (strict JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _build(option, value, where)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(errors[0] if errors else f"{where}: unexpected {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {k: _build(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if value is None:  # non-finite floats are written as null
            return math.nan
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    else:  # pragma: no cover - a type this module does not use
        raise SchemaError(f"{where}: unsupported type {tp!r}")
    raise SchemaError(f"{where}: expected {tp.__name__}, got {value!r:.60}")


def from_json(cls: type[T], data: Any, where: str = "$") -> T:
    """Build dataclass ``cls`` from parsed JSON, checking every field's type (extra keys ignored:
    a newer writer may add optional fields)."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            values[f.name] = _build(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{where}: missing required field {f.name!r}")
    return cls(**values)


def dumps_run(report: RunReport, *, indent: int | None = 1) -> str:
    return json.dumps(to_json(report), indent=indent, ensure_ascii=False, allow_nan=False)


def parse_run(data: Any, source: str = "<run>") -> RunReport:
    """Validate a parsed ``editgate.run`` document and build the :class:`RunReport`."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SchemaError(f"{source}: not an editgate run report (schema != {SCHEMA!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{source}: schema_version {version!r} is not supported by this "
                          f"editgate (reads version {SCHEMA_VERSION})")
    try:
        return from_json(RunReport, data)
    except SchemaError as exc:
        raise SchemaError(f"{source}: {exc}") from None


def save_run(report: RunReport, path: Path) -> Path:
    from editgate.cache import atomic_write_text

    atomic_write_text(path, dumps_run(report) + "\n")
    return path


def load_run(path: str | Path) -> RunReport:
    """Read a run report written by :func:`save_run`; raises :class:`SchemaError` if invalid."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not JSON: {exc}") from None
    return parse_run(data, str(path))
