"""The orchestration behind the pytest plugin: one model, its baseline, and the edited states.

An :class:`EditgateSession` owns the single model in memory. Baselines are computed on the
unedited weights (before the first edit of the session) and cached on disk. An edited state is
a chain of deltas — step s of a regime is computed on the model with steps 1..s−1 applied — and
every delta is cached on disk under a key of everything it depends on (model, editor + version +
hyper-parameters, the requests of every step so far, seed). Deltas are applied in place and
reverted bit-exactly; the revert is verified by hashing the touched parameters.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from editgate.abilities.base import ItemResult
from editgate.cache import cache_key, cache_path, file_lock
from editgate.delta import AppliedDelta, WeightDelta
from editgate.edit_success import edit_success
from editgate.editors.base import EditContext, Editor
from editgate.edits import EditRequest, load_edit_requests
from editgate.errors import EditFailure, EditgateError
from editgate.evaluate import AbilityRun, Profile, cached_evaluate, prepare
from editgate.models import LoadedModel, load_model, param_digests, weights_digest
from editgate.regimes import EditCase
from editgate.registry import EDITORS
from editgate.runner import AbilityRunner

Progress = Callable[[str, int], Callable[[float], None]]  # (description, total) → advance(n)


@dataclass
class Settings:
    model: str
    data_dir: Path
    profile: Profile
    device: str = "auto"
    dtype: str = "float32"
    limit: int | None = None
    edit_source: str = "counterfact"
    seed: int = 0
    hparam_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class EditedState:
    """The model after an edit case's chain of deltas (or the reason the chain failed)."""

    case: EditCase
    requests: list[EditRequest]
    state_key: str
    edit_seconds: float = 0.0  # editor time spent computing (0 when every delta was cached)
    error: str | None = None


def _no_progress(description: str, total: int) -> Callable[[float], None]:
    return lambda n: None


class EditgateSession:
    def __init__(self, settings: Settings, progress: Progress = _no_progress) -> None:
        self.settings = settings
        self.progress = progress
        self._lm: LoadedModel | None = None
        self._runner: AbilityRunner | None = None
        self._runs: dict[str, AbilityRun] = {}
        self._baselines: dict[str, list[ItemResult]] = {}
        self._requests: list[EditRequest] | None = None
        self._requests_hash = ""
        self._applied: list[AppliedDelta] = []
        self._success: dict[str, dict[str, list[ItemResult]]] = {}
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- model and abilities

    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            torch.manual_seed(self.settings.seed)
            self._lm = load_model(self.settings.model, device=self.settings.device,
                                  dtype=self.settings.dtype)
            self.timings["model_load_s"] = self._lm.load_seconds
            self._base_digests = param_digests(self._lm.model)
        return self._lm

    @property
    def runner(self) -> AbilityRunner:
        if self._runner is None:
            self._runner = AbilityRunner(self.lm)
        return self._runner

    def ability_run(self, name: str) -> AbilityRun:
        if name not in self._runs:
            self._runs[name] = prepare(name, self.settings.data_dir, self.settings.model,
                                       self.settings.profile, self.settings.limit)
        return self._runs[name]

    # ---------------------------------------------------------------- baseline

    def baseline(self, ability: str) -> list[ItemResult]:
        """Per-item results of the unedited model (computed only while no delta is applied)."""
        if ability not in self._baselines:
            if self._applied:
                raise RuntimeError("baseline requested while the model is edited; call "
                                   "ensure_baselines() before editing")
            run = self.ability_run(ability)
            start = time.perf_counter()
            advance = self.progress(f"baseline · {ability}", len(run.items))
            self._baselines[ability] = cached_evaluate(run, self.runner, "base", advance)
            self.timings[f"baseline.{ability}_s"] = time.perf_counter() - start
        return self._baselines[ability]

    def ensure_baselines(self, abilities: list[str]) -> None:
        for ability in abilities:
            self.baseline(ability)

    # ---------------------------------------------------------------- edits

    def requests(self, count: int) -> list[EditRequest]:
        if self._requests is None or len(self._requests) < count:
            self._requests, self._requests_hash = load_edit_requests(
                self.settings.edit_source, self.settings.data_dir, count,
                skip_invalid=self.settings.edit_source == "zsre")
        return self._requests[:count]

    def _delta_path(self, editor: Editor, hparams: Any, chain: list[list[EditRequest]],
                    batch_size: int) -> tuple[Path, str]:
        key = cache_key(
            model=self.lm.fingerprint, editor=editor.name, version=editor.version,
            hparams=dataclasses.asdict(hparams), seed=self.settings.seed, batch=batch_size,
            chain=[[dataclasses.astuple(r) for r in step] for step in chain],
        )
        return cache_path("deltas", key, ".safetensors"), key

    @contextmanager
    def edited(self, case: EditCase) -> Iterator[EditedState]:
        """Apply ``case``'s chain of deltas, yield the edited state, then revert bit-exactly."""
        lm = self.lm
        editor: Editor = EDITORS.get(case.editor)()
        requests = self.requests(case.regime.total)[: case.checkpoint]
        batch = case.regime.batch_size
        state = EditedState(case, requests, state_key="")
        ctx = EditContext(lm, self.settings.data_dir, seed=self.settings.seed)
        touched: set[str] = set()
        try:
            hparams = editor.hparams(lm, self.settings.hparam_overrides.get(case.editor))
            chain: list[list[EditRequest]] = []
            advance = self.progress(f"edit · {case.id}", case.steps)
            for step in range(case.steps):
                chain.append(requests[step * batch:(step + 1) * batch])
                path, key = self._delta_path(editor, hparams, chain, batch)
                delta, seconds = self._load_or_compute(path, editor, ctx, chain[-1], hparams)
                state.edit_seconds += seconds
                touched.update(delta.updates)
                self._applied.append(delta.apply(lm.model))
                state.state_key = key
                advance(1)
        except EditgateError as exc:
            state.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # an editor bug is a failed gate for that editor, not a crash
            state.error = f"editor {case.editor!r} raised {type(exc).__name__}: {exc}"
        try:
            yield state
        finally:
            self.revert_all()
            changed = [n for n in sorted(touched)
                       if weights_digest(lm.model, [n]) != self._base_digests[n]]
            if changed:
                raise EditFailure(f"{case.id}: {changed} differ from the baseline after revert")

    def _load_or_compute(self, path: Path, editor: Editor, ctx: EditContext,
                         requests: list[EditRequest], hparams: Any) -> tuple[WeightDelta, float]:
        state_path = path.with_suffix(".state.safetensors")
        if path.exists():
            try:
                delta = WeightDelta.load(path)
                if state_path.exists():
                    ctx.state = _load_state(state_path)
                return delta, 0.0
            except Exception:
                path.unlink(missing_ok=True)  # corrupted: recompute
        with file_lock(path):
            if path.exists():
                return self._load_or_compute(path, editor, ctx, requests, hparams)
            start = time.perf_counter()
            torch.manual_seed(ctx.seed)
            delta = editor.edit(ctx, requests, hparams)
            seconds = time.perf_counter() - start
            if not delta.is_finite():
                raise EditFailure(f"{editor.name} produced a delta with NaN/Inf values")
            from editgate.cache import atomic_write

            if ctx.state:
                atomic_write(state_path, lambda tmp: _save_state(ctx.state, tmp))
            atomic_write(path, lambda tmp: delta.save(tmp))
            self.timings.setdefault(f"edit.{editor.name}_s", 0.0)
            self.timings[f"edit.{editor.name}_s"] += seconds
            return delta, seconds

    def revert_all(self) -> None:
        while self._applied:
            self._applied.pop().revert()

    # ---------------------------------------------------------------- scoring edited states

    def evaluate(self, ability: str, state: EditedState) -> list[ItemResult]:
        run = self.ability_run(ability)
        advance = self.progress(f"{state.case.id} · {ability}", len(run.items))
        return cached_evaluate(run, self.runner, state.state_key, advance)

    def edit_success(self, state: EditedState) -> dict[str, list[ItemResult]]:
        """Efficacy / paraphrase / neighborhood outcomes on the edited model (memoised per state)."""
        if state.state_key not in self._success:
            self._success[state.state_key] = edit_success(self.runner, state.requests)
        return self._success[state.state_key]


def _save_state(state: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(path))


def _load_state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(path)))
