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

from editgate.abilities.base import AbilityRun, ItemResult
from editgate.baselines import golden_precision, summarize
from editgate.cache import atomic_write, cache_path, file_lock
from editgate.delta import AppliedDelta, WeightDelta
from editgate.edit_success import edit_success, locality_reference
from editgate.editors.base import EditContext, Editor
from editgate.edits import EditRequest, load_edit_requests, read_edit_file
from editgate.errors import DataError, EditFailure, EditgateError
from editgate.evaluate import cached_evaluate, prepare, results_key
from editgate.fingerprint import compute_key
from editgate.models import LoadedModel, load_model, param_digests, weights_digest
from editgate.profiles import Profile
from editgate.regimes import EditCase
from editgate.registry import EDITORS
from editgate.runner import DEFAULT_EVAL_DTYPE, DEFAULT_GENERATION_DTYPE, AbilityRunner

Progress = Callable[[str, int], Callable[[float], None]]  # (description, total) → advance(n)


@dataclass
class Settings:
    model: str
    data_dir: Path
    profile: Profile
    device: str = "auto"
    dtype: str = "float32"  # weights, and the edits applied to them
    eval_dtype: str = DEFAULT_EVAL_DTYPE  # scoring forwards (autocast when below `dtype`)
    generation_dtype: str = DEFAULT_GENERATION_DTYPE  # greedy generation's forwards
    limit: int | None = None
    edit_source: str = "counterfact"
    edits_file: Path | None = None  # user-supplied requests instead of edit_source
    seed: int = 0
    hparam_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # --prompt


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
        self._golden_runner: AbilityRunner | None = None
        self._golden: dict[str, list[ItemResult]] = {}
        self._runs: dict[str, AbilityRun] = {}
        self._baselines: dict[str, list[ItemResult]] = {}
        self._requests: list[EditRequest] | None = None
        self._requests_hash = ""
        self._applied: list[AppliedDelta] = []
        self._success: dict[str, dict[str, list[ItemResult]]] = {}
        self._locality: dict[tuple[str, str], list[int]] | None = None
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
    def loaded_model(self) -> LoadedModel | None:
        """The model if this session has loaded it (never loads it)."""
        return self._lm

    @property
    def attention_fallback(self) -> str | None:
        """The SDPA backend the scoring runner fell back to, if it was created and had to."""
        return self._runner.attention_fallback if self._runner is not None else None

    @property
    def runner(self) -> AbilityRunner:
        """Scores every state the gates compare, in ``--eval-dtype``."""
        if self._runner is None:
            self._runner = AbilityRunner(self.lm, eval_dtype=self.settings.eval_dtype,
                                         generation_dtype=self.settings.generation_dtype)
        return self._runner

    @property
    def golden_runner(self) -> AbilityRunner:
        """Scores the golden baselines: in float32 (or the weights' own precision), which
        reproduces across CPU kernels where bf16 does not (README, "Reproducibility")."""
        if self._golden_runner is None:
            precision = golden_precision(self.lm.dtype)
            if (self.runner.eval_dtype, self.runner.generation_dtype) == (precision, precision):
                self._golden_runner = self.runner
            else:
                self._golden_runner = AbilityRunner(self.lm, eval_dtype=precision,
                                                    generation_dtype=precision)
        return self._golden_runner

    def ability_run(self, name: str) -> AbilityRun:
        if name not in self._runs:
            self._runs[name] = prepare(name, self.settings.data_dir, self.settings.model,
                                       self.settings.profile, self.settings.limit,
                                       self.settings.prompt_overrides.get(name))
        return self._runs[name]

    # ---------------------------------------------------------------- baseline

    def baseline(self, ability: str) -> list[ItemResult]:
        """Per-item results of the unedited model (computed only while no delta is applied)."""
        if ability not in self._baselines:
            if self._applied:
                raise RuntimeError("baseline requested while the model is edited; call "
                                   "ensure_baselines() before editing")
            run, runner = self.ability_run(ability), self.runner  # the model loads untimed
            start = time.perf_counter()
            advance = self.progress(f"baseline · {ability}", len(run.items))
            self._baselines[ability] = cached_evaluate(run, runner, "base", advance)
            self.timings[f"baseline.{ability}_s"] = time.perf_counter() - start
        return self._baselines[ability]

    def golden_results(self, ability: str) -> list[ItemResult]:
        """Per-item results of the unedited model in the golden precision (see golden_runner)."""
        if self.golden_runner is self.runner:
            return self.baseline(ability)
        if ability not in self._golden:
            if self._applied:
                raise RuntimeError("golden baseline requested while the model is edited; call "
                                   "ensure_baselines() before editing")
            run = self.ability_run(ability)
            start = time.perf_counter()
            advance = self.progress(f"golden · {ability}", len(run.items))
            self._golden[ability] = cached_evaluate(run, self.golden_runner, "base", advance)
            self.timings[f"golden.{ability}_s"] = time.perf_counter() - start
        return self._golden[ability]

    def golden_entry(self, ability: str) -> dict[str, Any]:
        """The ability's golden-file entry as scored now (see :class:`editgate.baselines.GoldenBaselines`)."""
        run = self.ability_run(ability)
        return summarize(run, self.golden_results(ability), run.requests_digest(self.lm))

    def ensure_baselines(self, abilities: list[str], max_edits: int = 0,
                         golden: list[str] = ()) -> None:
        """Everything that needs the unedited weights: ability baselines, the golden baselines of
        ``golden``, the unedited argmax tokens of the locality probes."""
        for ability in abilities:
            self.baseline(ability)
        for ability in golden:
            self.golden_results(ability)
        # Locality (EasyEdit's argmax agreement) compares with the unedited model's tokens.
        if max_edits and self._locality is None:
            if self._applied:
                raise RuntimeError("locality reference requested while the model is edited")
            self._locality = locality_reference(self.runner, self.requests(max_edits))

    # ---------------------------------------------------------------- edits

    def requests(self, count: int) -> list[EditRequest]:
        """The first ``count`` edit requests (from --edits-file, else the edit source)."""
        if self.settings.edits_file is not None:
            if self._requests is None:
                self._requests = read_edit_file(self.settings.edits_file)
            if len(self._requests) < count:
                raise DataError(f"{len(self._requests)} edit requests, the regimes need {count}",
                                path=self.settings.edits_file)
        elif self._requests is None or len(self._requests) < count:
            self._requests, self._requests_hash = load_edit_requests(
                self.settings.edit_source, self.settings.data_dir, count,
                skip_invalid=self.settings.edit_source == "zsre")
        return self._requests[:count]

    def _delta_path(self, editor: Editor, hparams: Any, chain: list[list[EditRequest]],
                    batch_size: int) -> tuple[Path, str]:
        key = compute_key(
            self.lm, type(editor), editor=editor.name, hparams=dataclasses.asdict(hparams),
            seed=self.settings.seed, batch=batch_size,
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
                ctx.weights_key = state.state_key or f"base:{lm.fingerprint}"
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
        """The cached delta of this chain step (restoring the regime state saved with it), or a
        freshly computed one, saved atomically under a lock so parallel workers compute it once."""

        def cached() -> WeightDelta | None:
            if not path.exists():
                return None
            try:
                delta, state = WeightDelta.load_with_extra(path)
            except Exception:  # truncated or corrupted: recompute, never trust
                path.unlink(missing_ok=True)
                return None
            ctx.state = dict(state)
            return delta

        if (delta := cached()) is not None:
            return delta, 0.0
        with file_lock(path):
            if (delta := cached()) is not None:  # another worker finished it while we waited
                return delta, 0.0
            start = time.perf_counter()
            torch.manual_seed(ctx.seed)
            delta = editor.edit(ctx, requests, hparams)
            seconds = time.perf_counter() - start
            if not delta.is_finite():
                raise EditFailure(f"{editor.name} produced a delta with NaN/Inf values")
            atomic_write(path, lambda tmp: delta.save(tmp, extra=ctx.state))
            self.timings[f"edit.{editor.name}_s"] = (
                self.timings.get(f"edit.{editor.name}_s", 0.0) + seconds)
            return delta, seconds

    def revert_all(self) -> None:
        while self._applied:
            self._applied.pop().revert()

    # ---------------------------------------------------------------- scoring edited states

    def evaluate(self, ability: str, state: EditedState) -> list[ItemResult]:
        run = self.ability_run(ability)
        advance = self.progress(f"{state.case.id} · {ability}", len(run.items))
        return cached_evaluate(run, self.runner, state.state_key, advance)

    def results_path(self, ability: str, state_key: str) -> Path:
        """Where the per-item results of ``ability`` in weight state ``state_key`` are cached."""
        return cache_path("results", results_key(self.ability_run(ability), self.runner, state_key),
                          ".json")

    def edit_success(self, state: EditedState) -> dict[str, list[ItemResult]]:
        """Efficacy / paraphrase / neighborhood outcomes on the edited model (memoised per state)."""
        if state.state_key not in self._success:
            self._success[state.state_key] = edit_success(self.runner, state.requests,
                                                          self._locality)
        return self._success[state.state_key]
