r"""FT-L — constrained fine-tuning of one MLP layer (Zhu et al., 2020, arXiv 2012.00363).

The standard weak baseline of the editing literature (ROME's "FT+L"): fine-tune the output
projection W of one MLP layer on the edit itself, with every entry of the change bounded,

    min_Δ  mean_i −log P(target_new_i | prompt_i;  W + Δ)     s.t.  ‖Δ‖_∞ ≤ ε

by Adam steps on Δ followed by clipping each entry to [−ε, ε] (projected gradient descent onto
the L∞ ball). Nothing steers the change toward the subject or away from other facts, so FT-L
typically wins on the edit prompt, generalises poorly to paraphrases and leaks to neighbours —
which is what a baseline is for.

The loss is teacher-forced over all target tokens, computed only at the target positions. Δ is
applied through a forward hook (output + x Δᵀ), so the model's weights are never touched while
optimising. Several requests are fitted jointly, so FT-L can batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from editgate.delta import WeightDelta, linear_update
from editgate.editors.base import Batch, EditContext, Editor, depth_scaled_layer, weight_out_in
from editgate.edits import EditRequest
from editgate.models import LoadedModel


@dataclass(frozen=True)
class FTLHParams:
    layer: int = 5
    steps: int = 25
    lr: float = 5e-4
    norm_constraint: float = 5e-4  # ε: bound on every entry of ΔW
    early_stop_loss: float = 0.05  # stop once the mean target NLL is this low
    autocast_bf16: bool = True


class FTL(Editor):
    name = "ft-l"
    HParams = FTLHParams
    can_batch = True

    def default_hparams(self, lm: LoadedModel) -> dict[str, Any]:
        return {"layer": depth_scaled_layer(lm, 5 / 32)}  # ROME's layer: the same memory

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: FTLHParams,
             ) -> WeightDelta:
        lm = ctx.lm
        device = lm.device
        rows, positions, targets = [], [], []
        for row, request in enumerate(requests):
            prompt, target = lm.encode(request.prompt, bos=True), lm.encode(request.target_new)
            rows.append(prompt + target[:-1])
            for offset, token in enumerate(target):  # logits at len(prompt)-1+t predict token t
                positions.append((row, len(prompt) - 1 + offset))
                targets.append(token)
        batch = Batch.of(lm, rows)
        row_index = torch.tensor([r for r, _ in positions], device=device)
        col_index = torch.tensor([c for _, c in positions], device=device)
        target_ids = torch.tensor(targets, device=device)

        shape = weight_out_in(lm, hp.layer).shape
        delta = torch.zeros(shape, device=device, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=hp.lr)

        def add_update(mod: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return output + F.linear(args[0], delta.to(args[0].dtype))

        handle = lm.module(lm.layout.out_proj_name(hp.layer)).register_forward_hook(add_update)
        try:
            for _ in range(hp.steps):
                optimizer.zero_grad()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=hp.autocast_bf16):
                    hidden = lm.decoder(input_ids=batch.ids,
                                        attention_mask=batch.mask).last_hidden_state
                log_probs = F.log_softmax(lm.head_logits(hidden[row_index, col_index].float()), -1)
                # Mean NLL per request (so long targets do not outweigh short ones).
                token_nll = -log_probs.gather(-1, target_ids[:, None])[:, 0]
                per_request = torch.zeros(len(requests), device=device).index_add(
                    0, row_index, token_nll) / torch.bincount(row_index, minlength=len(requests))
                loss = per_request.mean()
                if loss.item() < hp.early_stop_loss:
                    break
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    delta.clamp_(-hp.norm_constraint, hp.norm_constraint)
        finally:
            handle.remove()
        update = linear_update(lm.layout.transposed, delta.detach().clone())
        return WeightDelta({lm.layout.weight_name(hp.layer): update},
                           {"editor": self.name, "layer": str(hp.layer)})
