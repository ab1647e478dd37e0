r"""RECT — RElative Change in weighT (Gu et al., 2024, arXiv 2401.04700, the paper editgate gates).

Gu et al. observe that the general abilities an edit destroys go with the edit's *overall* size,
while the fact itself needs only the few weights that change most relative to their own value.
RECT therefore post-processes any editor's update ΔW: rank the entries by relative change

    ρ_ij = |ΔW_ij| / |W_ij|

keep the top ``keep_fraction`` f of them (the paper keeps 20 %) and zero the rest:

    ΔW_RECT = ΔW ⊙ M,   M_ij = 1 iff ρ_ij ≥ ρ₍ₖ₎,   k = ⌊(1 − f) · |W|⌋

where ρ₍ₖ₎ is the k-th smallest ratio: the rule of the one public implementation, the AlphaEdit
repository's ``memit/memit_rect_main.py`` (``kthvalue`` at ⌊(1 − f)·n⌋, ``>=``, ρ = |ΔW / (W + 10⁻⁸)|).
With distinct ratios that keeps n − k + 1 entries, one more than ⌈f·n⌉ (the boundary entry is
kept), and ties at the boundary are all kept; f ≥ 1 keeps everything, f ≤ 0 nothing (where the
reference's ``kthvalue`` fails or keeps the largest entry). Entries of W that are exactly zero rank
first. The result is dense and no longer low rank. ``tests/test_reference_rome_memit.py`` checks
``memit+rect`` against that implementation (which hard-codes f = 40 %).

``rome+rect`` and ``memit+rect`` are the composed editors: the base editor's hyper-parameters
(``hparams/rome.toml`` / ``memit.toml``) plus ``keep_fraction`` (``hparams/rect.toml``), one flat
set, so ``--hparam memit+rect.layers=…`` and ``--hparam memit+rect.keep_fraction=0.3`` both work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from editgate.delta import WeightDelta
from editgate.editors.base import EditContext, Editor
from editgate.editors.memit import MEMIT
from editgate.editors.rome import ROME
from editgate.edits import EditRequest
from editgate.models import LoadedModel

RECT_VERSION = "2"
EPSILON = 1e-8  # added to W before dividing, as the reference does
DEFAULT_KEEP_FRACTION = 0.2


def rect(delta: WeightDelta, lm: LoadedModel, keep_fraction: float) -> WeightDelta:
    """Keep the entries of each update whose |ΔW / W| reaches the top ``keep_fraction``."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in [0, 1], got {keep_fraction}")
    params = dict(lm.model.named_parameters())
    updates = {}
    for name in delta.updates:
        dense = delta.dense(name)
        weight = params[name].detach().to(dense.device, torch.float32)
        relative = (dense.float() / (weight + EPSILON)).abs().flatten()
        relative = torch.nan_to_num(relative, nan=0.0, posinf=torch.finfo(torch.float32).max)
        k = int(relative.numel() * (1.0 - keep_fraction))
        if keep_fraction <= 0.0:
            mask = torch.zeros_like(relative, dtype=torch.bool)
        elif k == 0:
            mask = torch.ones_like(relative, dtype=torch.bool)
        else:
            mask = relative >= torch.kthvalue(relative.cpu(), k).values.to(relative.device)
        updates[name] = dense * mask.view_as(dense)
    return WeightDelta(updates, {**delta.meta, "rect_keep_fraction": str(keep_fraction)})


def _with_keep_fraction(base: type) -> type:
    """The base editor's HParams dataclass plus ``keep_fraction`` (one flat, frozen set)."""
    fields = [(f.name, f.type, dataclasses.field(default=f.default))
              for f in dataclasses.fields(base)]
    fields.append(("keep_fraction", float, dataclasses.field(default=DEFAULT_KEEP_FRACTION)))
    return dataclasses.make_dataclass(f"{base.__name__}RECT", fields, frozen=True)


class WithRECT(Editor):
    """``<base>+rect``: run the base editor, then keep only the top relative changes."""

    base: ClassVar[type[Editor]]

    def default_hparams(self, lm: LoadedModel) -> dict[str, Any]:
        return self.base().default_hparams(lm)

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: Any) -> WeightDelta:
        base = self.base()
        names = {f.name for f in dataclasses.fields(base.HParams)}
        base_hp = base.HParams(**{k: v for k, v in dataclasses.asdict(hp).items() if k in names})
        delta = base.edit(ctx, requests, base_hp)
        return rect(delta, ctx.lm, hp.keep_fraction)


class ROMEWithRECT(WithRECT):
    name = "rome+rect"
    base = ROME
    version = f"{ROME.version}.{RECT_VERSION}"
    can_batch = ROME.can_batch
    HParams = _with_keep_fraction(ROME.HParams)
    hparams_files = ("rome", "rect")


class MEMITWithRECT(WithRECT):
    name = "memit+rect"
    base = MEMIT
    version = f"{MEMIT.version}.{RECT_VERSION}"
    can_batch = MEMIT.can_batch
    HParams = _with_keep_fraction(MEMIT.HParams)
    hparams_files = ("memit", "rect")
