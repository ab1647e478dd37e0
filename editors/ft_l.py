r"""FT-L — constrained fine-tuning of one MLP layer (Zhu et al., 2020, arXiv 2012.00363).

The standard weak baseline of the editing literature, as ROME's "FT+L" (kmeng01/rome
``baselines/ft/ft_main.py``) and EasyEdit's FT with ``objective_optimization: prompt_last``
implement it. Fine-tune the MLP output projection W (on GPT-2 also its bias, see below) of one
layer on the edit itself, every entry kept within ε of its original value:

    min_W  mean_r  −1/|y_r| Σ_{t ∈ y_r} log P(t | x_r; W)        s.t.  ‖W − W₀‖_∞ ≤ ε

Note the objective: **every** target token t of request r is scored at the *last prompt
position* — the model is asked to put probability on each token of ``target_new`` as the very
next token, not teacher-forced through the answer (that objective is FT-M, ``ft_m.py``). It is
what the FT-L rows of the ROME and EasyEdit tables measure.

The optimisation is the reference's, step by step: ``steps`` epochs over the requests in chunks of
``batch_size``; for each chunk, the mean NLL above; if it is at least ``stop_loss`` one Adam step
(weight decay 0) on W, and in any case W is clamped entrywise to [W₀ − ε, W₀ + ε]; an epoch whose
size-weighted mean loss is below ``stop_loss`` ends the fit. ``norm_constraint = inf`` is the
references' ``norm_constraint: false`` (EasyEdit's LLaMA configs): no clamp.

Which parameters: the references name a module template, and every parameter whose name contains
it is fine-tuned — on GPT-2 (``transformer.h.{}.mlp.c_proj``) that is the weight *and* the bias,
on LLaMA (``...mlp.down_proj.weight``) the weight alone. ``include_bias`` reproduces that.

The fitted W is a detached copy fed to the model through ``torch.func.functional_call``: the
model's own parameters are never touched, and the arithmetic is the reference's (Adam on W itself,
the clamp around W₀). The result is ΔW = W − W₀. Nothing steers the change toward the subject or
away from other facts, so FT-L wins on the edit prompt, generalises poorly and leaks to
neighbours — which is what a baseline is for.

Named option (off by default, as in the references): ``autocast_bf16`` runs the forward passes in
bfloat16 (faster on CPUs with bf16 matmuls; the edit then differs from the reference's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from editgate.delta import WeightDelta
from editgate.editors.base import Batch, EditContext, Editor, depth_scaled_layer
from editgate.edits import EditRequest
from editgate.models import LoadedModel


@dataclass(frozen=True)
class FTLHParams:
    layer: int = 5
    steps: int = 25  # epochs over the requests (the references' num_steps)
    lr: float = 5e-4
    norm_constraint: float = 5e-4  # ε: bound on every entry of ΔW; inf = unconstrained
    batch_size: int = 64  # requests per Adam step (ROME's default; EasyEdit's LLaMA configs: 1)
    stop_loss: float = 1e-2  # a chunk this low takes no step; an epoch this low ends the fit
    include_bias: bool = False  # also fine-tune the projection's bias (GPT-2's template does)
    autocast_bf16: bool = False  # named option: bf16 forwards (not the reference)


# (row, position, token): the logits at `position` of batch row `row` should predict `token`.
Targets = list[tuple[int, int, int]]
Objective = Callable[[LoadedModel, Sequence[EditRequest]], tuple[Batch, Targets]]


def prompt_last_targets(lm: LoadedModel, requests: Sequence[EditRequest]) -> tuple[Batch, Targets]:
    """FT-L: rows are the prompts; every target token is scored at the prompt's last position."""
    rows, targets = [], []
    for row, request in enumerate(requests):
        prompt = lm.encode(request.prompt, bos=True)
        rows.append(prompt)
        targets.extend((row, len(prompt) - 1, token) for token in lm.encode(request.target_new))
    return Batch.of(lm, rows), targets


class FTL(Editor):
    name = "ft-l"
    version = "2"  # the reference objective (v1 was teacher-forced: now ft-m)
    HParams = FTLHParams
    can_batch = True

    def default_hparams(self, lm: LoadedModel) -> dict[str, Any]:
        return {"layer": depth_scaled_layer(lm, 5 / 32)}  # ROME's layer, for unknown families

    def objective(self) -> Objective:
        return prompt_last_targets

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: FTLHParams,
             ) -> WeightDelta:
        return fine_tune(ctx.lm, requests, hp, self.objective(), self.name)


def _decoder_names(lm: LoadedModel, names: Sequence[str]) -> dict[str, str]:
    """Full parameter names → names relative to ``lm.decoder`` (for functional_call)."""
    prefix = next(name for name, module in lm.model.named_modules() if module is lm.decoder)
    prefix = prefix + "." if prefix else ""
    return {name: name.removeprefix(prefix) for name in names}


def fine_tune(lm: LoadedModel, requests: Sequence[EditRequest], hp: FTLHParams,
              objective: Objective, editor: str) -> WeightDelta:
    """The references' fine-tuning loop (module docstring) under the given objective."""
    module_name = lm.layout.out_proj_name(hp.layer)
    names = [module_name + ".weight"]
    if hp.include_bias and getattr(lm.module(module_name), "bias", None) is not None:
        names.append(module_name + ".bias")
    originals = {n: lm.model.get_parameter(n).detach() for n in names}
    weights = {n: w.clone().float().requires_grad_() for n, w in originals.items()}
    relative = _decoder_names(lm, names)
    optimizer = torch.optim.Adam(list(weights.values()), lr=hp.lr, weight_decay=0)
    eps = hp.norm_constraint
    chunks = [requests[i:i + hp.batch_size] for i in range(0, len(requests), hp.batch_size)]
    prepared = [objective(lm, chunk) for chunk in chunks]

    def chunk_loss(batch: Batch, targets: Targets, n_rows: int) -> torch.Tensor:
        params = {relative[n]: w.to(originals[n].dtype) for n, w in weights.items()}
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=hp.autocast_bf16):
            hidden = functional_call(lm.decoder, params, args=(), kwargs=dict(
                input_ids=batch.ids, attention_mask=batch.mask)).last_hidden_state
        index = torch.tensor(targets, device=lm.device)
        log_probs = F.log_softmax(lm.head_logits(hidden[index[:, 0], index[:, 1]].float()), -1)
        nll = -log_probs.gather(-1, index[:, 2:3])[:, 0]
        # Mean over each request's target tokens, then over requests (as the references).
        per_row = torch.zeros(n_rows, device=lm.device).index_add(0, index[:, 0], nll)
        return (per_row / torch.bincount(index[:, 0], minlength=n_rows)).mean()

    for _ in range(hp.steps):
        total, count = 0.0, 0
        for chunk, (batch, targets) in zip(chunks, prepared):
            optimizer.zero_grad()
            loss = chunk_loss(batch, targets, len(chunk))
            total, count = total + loss.item() * len(chunk), count + len(chunk)
            if loss.item() >= hp.stop_loss:
                loss.backward()
                optimizer.step()
            if math.isfinite(eps):
                with torch.no_grad():
                    for n, w in weights.items():
                        original = originals[n].float()
                        w.copy_(torch.clamp(w, min=original - eps, max=original + eps))
        if total / count < hp.stop_loss:
            break

    # W is the parameter itself (GPT-2's Conv1D orientation included): ΔW needs no transpose.
    updates = {n: (w.detach() - originals[n].float()).to(originals[n].dtype)
               for n, w in weights.items()}
    return WeightDelta(updates, {"editor": editor, "layer": str(hp.layer)})
