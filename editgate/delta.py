"""WeightDelta: what an editor returns — parameter name → additive update, dense or low rank.

Updates are stored in the parameter's own orientation (a GPT-2 Conv1D weight is [in, out]), so
applying is a plain in-place ``param += update``. Floating-point addition is not invertible
(``(w + d) - d != w`` in general), so :meth:`WeightDelta.apply` keeps a copy of just the touched
parameters and :meth:`AppliedDelta.revert` copies those bytes back: the revert is bit-exact and the
model itself is never copied.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from editgate.cache import load_tensors, save_tensors
from editgate.errors import EditFailure


@dataclass(frozen=True)
class LowRank:
    """ΔW = left @ right.T with left [out, r] and right [in, r] (param orientation)."""

    left: torch.Tensor
    right: torch.Tensor

    def dense(self) -> torch.Tensor:
        return self.left @ self.right.T

    @property
    def rank_bound(self) -> int:
        return self.left.shape[1]


Update = torch.Tensor | LowRank


def _dense(update: Update) -> torch.Tensor:
    return update.dense() if isinstance(update, LowRank) else update


@dataclass
class WeightDelta:
    """An edit as data: ``updates[param_name]`` is added to that parameter."""

    updates: dict[str, Update] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)  # editor name, hparams digest, ...

    def __bool__(self) -> bool:
        return bool(self.updates)

    def dense(self, name: str) -> torch.Tensor:
        return _dense(self.updates[name])

    def is_finite(self) -> bool:
        return all(torch.isfinite(_dense(u)).all() for u in self.updates.values())

    def norm(self) -> float:
        """Frobenius norm over all updated parameters."""
        return float(sum(_dense(u).double().pow(2).sum() for u in self.updates.values()) ** 0.5)

    def rank(self, name: str, rtol: float = 1e-5) -> int:
        """Numerical rank of one update (singular values above rtol × the largest)."""
        values = torch.linalg.svdvals(_dense(self.updates[name]).double())
        return int((values > rtol * values.max()).sum()) if values.numel() and values.max() > 0 else 0

    def __add__(self, other: WeightDelta) -> WeightDelta:
        """Sum of two deltas (dense where both touch the same parameter)."""
        updates: dict[str, Update] = dict(self.updates)
        for name, update in other.updates.items():
            updates[name] = _dense(updates[name]) + _dense(update) if name in updates else update
        return WeightDelta(updates, {**self.meta, **other.meta})

    def apply(self, model: nn.Module) -> AppliedDelta:
        """Add the updates in place; the returned handle reverts them bit-exactly."""
        if not self.is_finite():
            raise EditFailure("the delta holds NaN or Inf values; refusing to apply it")
        params = dict(model.named_parameters())
        unknown = sorted(set(self.updates) - set(params))
        if unknown:
            raise EditFailure(f"the delta updates parameters the model does not have: {unknown}")
        dense_updates = {name: _dense(update) for name, update in self.updates.items()}
        for name, dense in dense_updates.items():  # check everything before touching anything
            if dense.shape != params[name].shape:
                raise EditFailure(f"update for {name} has shape {tuple(dense.shape)}, "
                                  f"parameter has {tuple(params[name].shape)}")
        backups: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, dense in dense_updates.items():
                param = params[name]
                backups[name] = param.detach().clone()
                param.add_(dense.to(device=param.device, dtype=param.dtype))
        return AppliedDelta(model, backups)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        handle = self.apply(model)
        try:
            yield
        finally:
            handle.revert()

    def save(self, path: Path, extra: dict[str, torch.Tensor] | None = None) -> None:
        """safetensors file with a content digest; ``extra`` tensors (regime state) ride along."""
        tensors: dict[str, torch.Tensor] = {
            f"extra::{k}": v.detach().contiguous().cpu() for k, v in (extra or {}).items()}
        kinds: dict[str, str] = {}
        for name, update in self.updates.items():
            if isinstance(update, LowRank):
                tensors[f"{name}::left"] = update.left.contiguous().cpu()
                tensors[f"{name}::right"] = update.right.contiguous().cpu()
                kinds[name] = "lowrank"
            else:
                tensors[f"{name}::dense"] = update.contiguous().cpu()
                kinds[name] = "dense"
        metadata = {"kinds": json.dumps(kinds), "meta": json.dumps(self.meta)}
        save_tensors(tensors, path, metadata)

    @classmethod
    def load(cls, path: Path) -> WeightDelta:
        """Load a saved delta; a truncated or corrupted file raises (its digest does not match)."""
        return cls.load_with_extra(path)[0]

    @classmethod
    def load_with_extra(cls, path: Path) -> tuple[WeightDelta, dict[str, torch.Tensor]]:
        tensors, metadata = load_tensors(path)
        extra = {k.removeprefix("extra::"): v for k, v in tensors.items() if k.startswith("extra::")}
        kinds = json.loads(metadata["kinds"])
        updates: dict[str, Update] = {}
        for name, kind in kinds.items():
            if kind == "lowrank":
                updates[name] = LowRank(tensors[f"{name}::left"], tensors[f"{name}::right"])
            else:
                updates[name] = tensors[f"{name}::dense"]
        return cls(updates, json.loads(metadata.get("meta", "{}"))), extra


@dataclass
class AppliedDelta:
    """Handle for an applied delta; :meth:`revert` restores the saved bytes exactly."""

    model: nn.Module
    backups: dict[str, torch.Tensor]
    reverted: bool = False

    def revert(self) -> None:
        if self.reverted:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, original in self.backups.items():
                params[name].copy_(original)
        self.reverted = True


def linear_update(weight_is_transposed: bool, delta_out_in: torch.Tensor) -> torch.Tensor:
    """Turn a math-orientation ΔW ([out, in]) into the parameter's orientation."""
    return delta_out_in.T.contiguous() if weight_is_transposed else delta_out_in


def lowrank_update(weight_is_transposed: bool, left_out: torch.Tensor, right_in: torch.Tensor,
                   ) -> LowRank:
    """ΔW = left_out ⊗ right_in (math orientation [out, in]) as a LowRank in param orientation."""
    left, right = left_out.reshape(left_out.shape[0], -1), right_in.reshape(right_in.shape[0], -1)
    return LowRank(right, left) if weight_is_transposed else LowRank(left, right)
