"""The editor interface and the shared pieces every locate-and-edit method needs.

An editor is a pure function ``(model, tokenizer, requests, hparams) → WeightDelta``: it reads the
model, never leaves it changed, and keeps nothing between calls. Anything worth reusing (covariance
statistics, context templates, a trained hypernetwork) lives in an explicit, content-keyed on-disk
cache; state that must carry across *sequential* calls (AlphaEdit's accumulated keys) is passed in
and out through :class:`EditContext.state`, owned by the regime that drives the editor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import tomllib
import torch
from torch import nn

from editgate.delta import WeightDelta
from editgate.edits import EditRequest
from editgate.errors import ConfigError
from editgate.models import LoadedModel

HPARAMS_DIR = Path(__file__).parent / "hparams"


@dataclass
class EditContext:
    """What an editor may use besides the requests: the model, data, and regime-owned state."""

    lm: LoadedModel
    data_dir: Path
    seed: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # carried across sequential calls
    # Names the weights the editor is called on ("" = unnamed): the unedited model, or the delta
    # chain applied before this call. Caches of weight-dependent intermediates (MEMIT's targets)
    # key on it, so editors that start from the same weights share them.
    weights_key: str = ""


class Editor:
    """Base class. Subclasses set ``name``, ``HParams`` and implement :meth:`edit`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"  # bump when the same inputs would give a different delta
    can_batch: ClassVar[bool] = False  # accepts several requests in one call
    control: ClassVar[bool] = False  # a control (noop, random): runs only when named explicitly
    HParams: ClassVar[type]
    hparams_files: ClassVar[tuple[str, ...]] = ()  # hparams/<stem>.toml read in order

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hparams: Any) -> WeightDelta:
        raise NotImplementedError

    # ---------------------------------------------------------------- hyper-parameters

    def default_hparams(self, lm: LoadedModel) -> dict[str, Any]:
        """Depth-derived defaults for models without an entry in the hparams file."""
        return {}

    def hparams(self, lm: LoadedModel, overrides: dict[str, Any] | None = None) -> Any:
        """Dataclass defaults < depth-derived defaults < ``[family.X]`` < ``[model.X]`` < overrides.

        Read from ``editors/hparams/<stem>.toml`` for each stem in :attr:`hparams_files` (default:
        the editor's name with '-' → '_'); unknown keys are an error, not ignored. TOML arrays
        become tuples where the field's default is a tuple (e.g. MEMIT's ``layers``), nested
        arrays nested tuples.
        """
        values = self.default_hparams(lm)
        paths = [HPARAMS_DIR / f"{stem}.toml"
                 for stem in self.hparams_files or (self.name.replace("-", "_"),)]
        for path in paths:
            values.update(read_hparams_file(path, lm))
        values.update(overrides or {})
        fields = {f.name: f for f in dataclasses.fields(self.HParams)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"{self.name}: unknown hyper-parameters {unknown} "
                              f"(from {', '.join(p.name for p in paths)} or overrides)")
        for key, value in values.items():
            if isinstance(fields[key].default, tuple) and isinstance(value, list):
                values[key] = _as_tuple(value)
        return self.HParams(**values)


def _as_tuple(value: Any) -> Any:
    """Lists → tuples, nested ones too (``context_template_length_params = [[5, 10], …]``)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def read_hparams_file(path: Path, lm: LoadedModel) -> dict[str, Any]:
    """``[family.<family>]`` then ``[model.<name>]`` of one hparams file (empty if absent)."""
    if not path.is_file():
        return {}
    with open(path, "rb") as handle:
        table = tomllib.load(handle)
    return {**table.get("family", {}).get(lm.family, {}), **table.get("model", {}).get(lm.name, {})}


def depth_scaled_layer(lm: LoadedModel, fraction: float) -> int:
    """A layer at ``fraction`` of the model's depth (ROME's layer 5 of 32 on LLaMA-7B ≈ 0.17)."""
    return max(0, min(lm.num_layers - 1, round(fraction * lm.num_layers)))


# ------------------------------------------------------------------------- token positions


def subject_last_token(lm: LoadedModel, text: str, subject: str, *, bos: bool = True) -> int:
    """Index of the subject's last token in ``lm.encode(text, bos=bos)`` (first occurrence)."""
    start = text.index(subject)
    prefix_ids = lm.encode(text[: start + len(subject)], bos=bos)
    return len(prefix_ids) - 1


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids with an attention mask."""

    ids: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, lm: LoadedModel, sequences: Sequence[Sequence[int]]) -> Batch:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), lm.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(list(seq))
            mask[row, : len(seq)] = 1
        return cls(ids.to(lm.device), mask.to(lm.device))


# ------------------------------------------------------------------------- hooks on MLP outputs


@contextmanager
def capture_mlp_io(lm: LoadedModel, layers: Sequence[int]) -> Iterator[dict[int, dict]]:
    """Record the input (key) and output (value) of each layer's MLP output projection."""
    records: dict[int, dict] = {layer: {} for layer in layers}
    handles = []
    for layer in layers:
        module = lm.module(lm.layout.out_proj_name(layer))

        def hook(mod: nn.Module, args: tuple, output: torch.Tensor, layer: int = layer) -> None:
            records[layer]["input"] = args[0]
            records[layer]["output"] = output

        handles.append(module.register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest needed layer has run."""


@contextmanager
def stop_after(lm: LoadedModel, layer: int) -> Iterator[None]:
    """Abort the forward pass right after ``layer``'s MLP output projection (saves the rest)."""
    module = lm.module(lm.layout.out_proj_name(layer))

    def hook(*_: Any) -> None:
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def weight_out_in(lm: LoadedModel, layer: int) -> torch.Tensor:
    """The MLP output projection of ``layer`` as [out, in] (transposing GPT-2's Conv1D)."""
    weight = lm.module(lm.layout.out_proj_name(layer)).weight
    return weight.T if lm.layout.transposed else weight


def mlp_keys(lm: LoadedModel, layer: int, texts: Sequence[str], subjects: Sequence[str],
             ) -> torch.Tensor:
    """Key vectors (MLP output-projection inputs) at each subject's last token: [n, d_in]."""
    sequences = [lm.encode(t, bos=True) for t in texts]
    positions = [subject_last_token(lm, t, s) for t, s in zip(texts, subjects)]
    batch = Batch.of(lm, sequences)
    with torch.no_grad(), capture_mlp_io(lm, [layer]) as records:
        try:
            with stop_after(lm, layer):
                lm.model(input_ids=batch.ids, attention_mask=batch.mask)
        except StopForward:
            pass
    keys = records[layer]["input"]
    return torch.stack([keys[row, pos] for row, pos in enumerate(positions)]).float()


def check_overrides(editor: type[Editor], overrides: dict[str, Any]) -> None:
    """Validate ``--hparam`` overrides against the editor's HParams: known names, matching types."""
    fields = {f.name: f for f in dataclasses.fields(editor.HParams)}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(f"--hparam {editor.name}.{key}: unknown hyper-parameter; "
                              f"known: {', '.join(sorted(fields))}")
        default = fields[key].default
        if default is dataclasses.MISSING or default is None:
            continue
        expected = type(default)
        ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if expected is tuple and isinstance(value, list):  # hparams() makes it a tuple
            ok = True
        if not ok:
            raise ConfigError(f"--hparam {editor.name}.{key}={value!r}: expected "
                              f"{expected.__name__}, got {type(value).__name__}")


# ------------------------------------------------------------------------- residual stream


def block_name(lm: LoadedModel, layer: int) -> str:
    """The transformer block ``layer`` (its output is the residual stream after that layer)."""
    return f"{lm.layout.layers_path}.{layer}"


def first_tensor(output: Any) -> torch.Tensor:
    """A module's main output: blocks of some architectures return (hidden, ...) tuples."""
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def module_output_at(lm: LoadedModel, module_name: str, texts: Sequence[str],
                     subjects: Sequence[str]) -> torch.Tensor:
    """Output of ``module_name`` at each subject's last token, [n, d]; stops the pass there."""
    batch = Batch.of(lm, [lm.encode(t, bos=True) for t in texts])
    positions = [subject_last_token(lm, t, s) for t, s in zip(texts, subjects)]
    record: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, args: tuple, output: Any) -> None:
        record["output"] = first_tensor(output)
        raise StopForward

    handle = lm.module(module_name).register_forward_hook(hook)
    try:
        lm.model(input_ids=batch.ids, attention_mask=batch.mask)
    except StopForward:
        pass
    finally:
        handle.remove()
    return torch.stack([record["output"][row, pos] for row, pos in enumerate(positions)]).float()
