r"""MEMIT — Mass-Editing Memory in a Transformer (Meng et al., 2023, arXiv 2210.07229).

ROME writes one fact into one layer. MEMIT writes a batch of n facts into a range of layers
l₁ < … < l_L, each layer taking a share of the change so that no single weight moves far.

1. **Targets.** For each request i, ROME's value optimisation (:func:`rome.compute_value`) finds
   z_i = h_i + δ_i: the residual stream after the *last* edited layer l_L, at the subject's last
   token, that makes the new target likely (NLL over prefixed prompts, KL on "{s} is a", norm
   penalty, norm clamp).

2. **Spread.** For the j-th layer l = l_j (j = 0 … L−1), with the updates of the layers below it
   already applied::

       K   = [k_1 … k_n]ᵀ       keys at l: MLP down-projection inputs at the subject's last
                                token; ½ (plain prompt + mean over the prefixed prompts) [n, d_in]
       R   = (Z − H) / (L − j)  what is still missing at l_L (H recomputed on the current
                                weights), split evenly over this and the remaining layers [n, d_out]

   and W_l gets the covariance-weighted least-squares update

       Δ = argmin_Δ Σ_i ‖Δ k_i − r_i‖² + λ · E_k‖Δ k‖²  =  Rᵀ K (λ C + Kᵀ K)⁻¹,   C = E[k kᵀ]

   with C over a generic corpus (:mod:`editgate.stats`): new keys map to their residual, keys the
   model usually sees move as little as possible. Solved in float64; rank(Δ) ≤ n.

3. **Through a post-MLP norm** (``through_post_norm``; changes nothing on models without one). The
   published derivation assumes the MLP output joins the residual stream as is. Gemma 2/3 add
   N(m) = γ ⊙ m / rms(m) of the MLP output m instead, with gains γ up to ~800 on Gemma-3-270M, so
   writing R into m moves the residual by roughly γ/rms(m) ⊙ R — wildly more, or less, than asked.
   A naive port (``through_post_norm=false``) damages Gemma badly (README, "What the suite
   finds"). editgate first maps each layer's share R through N's inverse at the subject's current
   MLP output m::

       R_m = rms(m) · R / γ            (dimensions with |γ| < 1 % of the median |γ|: 0)

   which is exact when the new output keeps its rms (m + R_m = rms(m) · (N(m) + R)/γ, and N is
   scale-invariant) and first-order otherwise; the layer-by-layer recomputation of H absorbs the
   rest, as it absorbs the cross-layer effects.

The reference's settings map as ``mom2_weight`` ← ``mom2_update_weight``, ``steps`` ←
``v_num_grad_steps``, ``lr`` ← ``v_lr``, ``weight_decay`` ← ``v_weight_decay``; z is optimised by
:func:`rome.compute_value` exactly as memit/compute_z.py does it (the same loss, KL direction, stop
rule and clamp), from the plain prompt plus 5 prefixes of 10 tokens. ``autocast_bf16`` (off by
default) is the same deliberate deviation as ROME's. ``tests/test_reference_rome_memit.py``
checks keys, z and ΔW against kmeng01/memit on fixed inputs.

Applying the update of layer l changes the keys of the layers above it, which is why K and H are
recomputed layer by layer (the updates are applied to the model only while computing and reverted
bit-exactly before returning: the model is never left changed).

:func:`spread_over_layers` is shared with AlphaEdit, which swaps the least-squares solve for a
null-space-projected one. The targets z_i depend only on the weights, the request and the
optimisation settings, so they are cached on disk under those (when the caller names the weights,
:attr:`EditContext.weights_key`): MEMIT, AlphaEdit and MEMIT+RECT editing the unedited model with
the same settings optimise each z_i once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from editgate.cache import cache_path, get_or_compute
from editgate.delta import LowRank, WeightDelta, lowrank_update
from editgate.editors.base import (
    EditContext,
    Editor,
    block_name,
    depth_scaled_layer,
    mlp_keys,
    module_output_at,
)
from editgate.editors.rome import TemplateLengths, compute_value, context_template_groups
from editgate.edits import EditRequest
from editgate.fingerprint import compute_key
from editgate.models import LoadedModel
from editgate.stats import second_moments


@dataclass(frozen=True)
class MEMITHParams:
    """Defaults: kmeng01/memit's ``hparams/MEMIT/EleutherAI_gpt-j-6B.json`` (layers from depth)."""

    layers: tuple[int, ...] = (4, 5, 6, 7, 8)
    mom2_weight: float = 15_000.0  # λ (mom2_update_weight): how strongly generic keys are kept
    mom2_tokens: int = 100_000
    # Target (z) optimisation, as ROME's v* but at the residual stream after layers[-1].
    steps: int = 25
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75  # ‖δ‖ ≤ factor·‖h‖ (h: the whole residual stream)
    early_stop_loss: float = 0.05
    # One group of 5 prefixes of 10 tokens (memit_main.get_context_templates).
    context_template_length_params: TemplateLengths = ((10, 5),)
    autocast_bf16: bool = False  # as ROME's: a deliberate deviation, off by default
    # Map each layer's residual share through the inverse of a post-MLP norm (Gemma 2/3); see
    # step 3 of the module docstring. Ignored for models without one; false = the naive port.
    through_post_norm: bool = True


def memit_layers(lm: LoadedModel) -> tuple[int, ...]:
    """Five consecutive layers from ≈ 4/32 of the depth (LLaMA-7B: 4-8)."""
    first = min(depth_scaled_layer(lm, 4 / 32), max(0, lm.num_layers - 5))
    return tuple(range(first, min(first + 5, lm.num_layers)))


# solve(layer, K [n, d_in], R [n, d_out]) → (left [d_out, r], right [d_in, r]) with Δ = left rightᵀ
Solver = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class MEMIT(Editor):
    name = "memit"
    HParams = MEMITHParams
    can_batch = True

    def default_hparams(self, lm: LoadedModel) -> dict[str, Any]:
        return {"layers": memit_layers(lm)}

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: MEMITHParams,
             ) -> WeightDelta:
        moments = second_moments(ctx.lm, hp.layers, ctx.data_dir, n_tokens=hp.mom2_tokens)

        def solve(layer: int, keys: torch.Tensor, residual: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
            return least_squares_update(keys, residual, moments[layer], hp.mom2_weight)

        updates = spread_over_layers(ctx, requests, hp, solve)
        return WeightDelta(updates, {"editor": self.name, "layers": ",".join(map(str, hp.layers))})


def least_squares_update(keys: torch.Tensor, residual: torch.Tensor, moment: torch.Tensor,
                         weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Δ = Rᵀ K (λC + KᵀK)⁻¹ as (left = Rᵀ [d_out, n], right = (λC + KᵀK)⁻¹ Kᵀ [d_in, n]).

    Solved in float64 (C's eigenvalues span 2-3 orders of magnitude; λ multiplies them by 10⁴).
    """
    k64 = keys.double()
    system = weight * moment.to(keys.device).double() + k64.T @ k64
    right = torch.linalg.solve(system, k64.T)
    return residual.double().T.float(), right.float()


def request_targets(ctx: EditContext, requests: Sequence[EditRequest], hp: Any,
                    templates: Sequence[str]) -> torch.Tensor:
    """z_i: the residual stream after ``hp.layers[-1]`` that makes target_new likely, [n, d]."""
    lm = ctx.lm
    module = block_name(lm, hp.layers[-1])

    def target(request: EditRequest) -> torch.Tensor:
        prompts = [t.format(request.prompt) for t in templates]
        compute = lambda: {"z": compute_value(lm, request, prompts, hp, module)}
        if not ctx.weights_key:
            return compute()["z"]
        key = compute_key(lm, compute_value, weights=ctx.weights_key, module=module, prompts=prompts,
                        subject=request.subject, target=request.target_new,
                        settings={name: getattr(hp, name) for name in TARGET_SETTINGS})
        return get_or_compute(cache_path("targets", key, ".safetensors"), compute,
                              lambda value, tmp: save_file(value, str(tmp)),
                              lambda path: load_file(str(path)))["z"]

    return torch.stack([target(r) for r in requests])


# The hyper-parameters rome.compute_value reads: everything a cached target depends on besides
# the weights, the layer, the prompts and the request.
TARGET_SETTINGS = ("steps", "lr", "kl_factor", "weight_decay", "clamp_norm_factor",
                   "early_stop_loss", "autocast_bf16")


def request_keys(lm: LoadedModel, layer: int, requests: Sequence[EditRequest],
                 groups: Sequence[Sequence[str]]) -> torch.Tensor:
    """k_i at ``layer``: MLP keys at the subject's last token, [n, d_in].

    As memit/compute_ks.py: the mean over each template group (the plain prompt; the prefixes of
    one length), then the mean of those group means — the plain prompt weighs as much as all the
    prefixes of a group together.
    """
    templates = [t for group in groups for t in group]
    texts = [t.format(r.prompt) for r in requests for t in templates]
    subjects = [r.subject for r in requests for _ in templates]
    keys = mlp_keys(lm, layer, texts, subjects).reshape(len(requests), len(templates), -1)
    means, start = [], 0
    for group in groups:
        means.append(keys[:, start:start + len(group)].mean(1))
        start += len(group)
    return torch.stack(means).mean(0)


def spread_over_layers(ctx: EditContext, requests: Sequence[EditRequest], hp: Any,
                       solve: Solver) -> dict[str, LowRank]:
    """Steps 1-2 of the module docstring; ``solve`` turns (layer, K, R) into that layer's Δ."""
    lm = ctx.lm
    groups = context_template_groups(lm, hp.context_template_length_params, ctx.seed)
    targets = request_targets(ctx, requests, hp, [t for group in groups for t in group])
    prompts, subjects = [r.prompt for r in requests], [r.subject for r in requests]
    top = block_name(lm, hp.layers[-1])
    updates: dict[str, LowRank] = {}
    applied = []
    try:
        for j, layer in enumerate(hp.layers):
            keys = request_keys(lm, layer, requests, groups)
            current = module_output_at(lm, top, prompts, subjects)
            residual = (targets - current) / (len(hp.layers) - j)
            post_norm = lm.layout.post_norm_name(layer)
            if hp.through_post_norm and post_norm is not None:
                outputs = module_output_at(lm, lm.layout.out_proj_name(layer), prompts, subjects)
                residual = invert_post_norm(residual, outputs, norm_gain(lm.module(post_norm),
                                                                        residual.shape[-1]))
            left, right = solve(layer, keys, residual)
            name = lm.layout.weight_name(layer)
            updates[name] = lowrank_update(lm.layout.transposed, left, right)
            applied.append(WeightDelta({name: updates[name]}).apply(lm.model))
    finally:
        for handle in reversed(applied):  # bit-exact: the model leaves as it came
            handle.revert()
    return updates


def norm_gain(norm: torch.nn.Module, width: int) -> torch.Tensor:
    """The per-dimension gain γ of an RMS norm: its output on the all-ones vector (rms 1)."""
    weight = next(norm.parameters())
    with torch.no_grad():
        return norm(torch.ones(1, width, dtype=weight.dtype, device=weight.device))[0].float()


def invert_post_norm(residual: torch.Tensor, outputs: torch.Tensor, gain: torch.Tensor,
                     floor: float = 0.01) -> torch.Tensor:
    """R_m = rms(m) · R / γ: the change of the MLP outputs m [n, d] that moves N(m) by R [n, d].

    Dimensions whose gain is below ``floor`` × the median |γ| cannot carry a change (dividing by
    a near-zero gain would blow the output's rms up and with it every other dimension): 0 there.
    """
    rms = outputs.float().pow(2).mean(-1, keepdim=True).sqrt()
    usable = gain.abs() >= floor * gain.abs().median()
    inverse = torch.zeros_like(gain)
    inverse[usable] = 1.0 / gain[usable]
    return rms * residual.float() * inverse
