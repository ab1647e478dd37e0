r"""random-rank1 — a random rank-one update as large as ROME's.

For each request, ROME's update ΔW_ROME at ROME's layer is computed only for its size; the control
applies instead

    ΔW = ‖ΔW_ROME‖_F · u vᵀ / (‖u‖ ‖v‖),   u ~ N(0, I_out), v ~ N(0, I_in)

with u, v drawn from a generator seeded by (seed, request id): the same norm, a direction that
knows nothing about the fact. Next to it, an editor's damage reads as "any perturbation this big
hurts" (both fail) or "this edit's direction hurts" (only the editor fails).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editgate.delta import WeightDelta, lowrank_update
from editgate.editors.base import EditContext, Editor, weight_out_in
from editgate.editors.rome import ROME
from editgate.edits import EditRequest


@dataclass(frozen=True)
class RandomRank1HParams:
    seed_offset: int = 0  # vary the random direction without changing the run seed


class RandomRank1(Editor):
    name = "random-rank1"
    HParams = RandomRank1HParams
    can_batch = False
    control = True

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: RandomRank1HParams,
             ) -> WeightDelta:
        (request,) = requests
        rome = ROME()
        rome_hp = rome.hparams(ctx.lm)
        norm = rome.edit(ctx, [request], rome_hp).norm()
        digest = hashlib.sha256(f"{ctx.seed}:{hp.seed_offset}:{request.case_id}".encode())
        generator = torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little"))
        d_out, d_in = weight_out_in(ctx.lm, rome_hp.layer).shape
        u = torch.randn(d_out, generator=generator, dtype=torch.float64)
        v = torch.randn(d_in, generator=generator, dtype=torch.float64)
        left = (norm * u / u.norm()).float()
        right = (v / v.norm()).float()
        name = ctx.lm.layout.weight_name(rome_hp.layer)
        return WeightDelta({name: lowrank_update(ctx.lm.layout.transposed, left, right)},
                           {"editor": self.name, "layer": str(rome_hp.layer)})
