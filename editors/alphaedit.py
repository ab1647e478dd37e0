r"""AlphaEdit — null-space constrained knowledge editing (Fang et al., 2025, arXiv 2410.02355).

MEMIT trades the new facts off against preserved knowledge inside one least-squares objective
(the λC term), so every edit disturbs old keys a little, and the disturbances pile up over
sequential edits. AlphaEdit removes the trade-off: it restricts the update to directions that the
preserved keys do not use, so their outputs cannot change at all.

* **Preserved subspace.** C = E[k kᵀ] over a generic corpus (:mod:`editgate.stats`) has
  eigenvectors U and eigenvalues s. The keys the model usually sees live (almost entirely) in the
  span of the eigenvectors with large s. P = Û Ûᵀ, Û = the eigenvectors with
  s < ``nullspace_threshold`` (absolute, 2·10⁻² in every reference config, as
  ``experiments/evaluate.py:get_project`` applies it), projects onto the rest: the (approximate)
  null space of the preserved keys K₀, P K₀ ≈ 0. How much of the corpus's key energy the
  "null space" really leaves out depends on the scale of the model's keys, so
  ``nullspace_relative=true`` reads the threshold as a fraction of the largest eigenvalue
  instead — an editgate option, off by default (the measured effect on SmolLM2 is in
  ``hparams/alphaedit.toml``).

* **Update.** Targets and the layer-by-layer residual split are MEMIT's
  (:func:`memit.spread_over_layers`). At layer l with new keys K [n, d_in], residual R [n, d_out]
  and the keys K_p of all *past* edits (regime state), the update Δ = Δ̃P minimises

      ‖Δ̃P Kᵀ − Rᵀ‖² + α‖Δ̃P‖² + ‖Δ̃P K_pᵀ‖²        (fit the new facts, stay small, keep past edits)

  whose solution (with X = (ΔP)ᵀ) solves (P (Kᵀ K + K_pᵀ K_p) + α I) X = P Kᵀ R:

      Δ = Rᵀ Yᵀ,   Y = (P (KᵀK + K_pᵀK_p) + α I)⁻¹ P Kᵀ                     [d_in, n]

  Y lies in range(P) (Y = P(Kᵀ − (KᵀK + K_pᵀK_p) Y)/α), so Δ k₀ = Rᵀ Yᵀ k₀ = Rᵀ Yᵀ P k₀ = 0 for
  every key k₀ in the preserved subspace, exactly up to rounding. Solved in float64 (the
  reference solves in float32; the α I term keeps the system well conditioned, so the two agree
  to float32 rounding).

* **Sequential state.** After each call the new keys are appended to K_p. They live in
  ``ctx.state["alphaedit.keys.<layer>"]`` ([n_past, d_in] float32), which the regime saves next to
  each cached delta and passes back in — never in a global. The keys themselves are kept rather
  than K_pᵀK_p: smaller until more than d_in edits have been made.

The projection depends only on C and the threshold, so it is cached on disk under a digest of
both (an eigendecomposition per layer costs seconds).

The reference's settings map as ``l2`` ← ``L2``, ``steps`` ← ``v_num_grad_steps``, ``lr`` ←
``v_lr``, ``weight_decay`` ← ``v_weight_decay``; keys and targets are MEMIT's (reference: the
AlphaEdit repository's ``AlphaEdit/compute_ks.py`` and ``compute_z.py``, copies of MEMIT's).
``tests/test_reference_rome_memit.py`` checks P, ΔW and the carried keys against it, over two
sequential calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from editgate.cache import cache_key, cache_path, get_or_compute, tensors_digest
from editgate.delta import WeightDelta
from editgate.editors.base import EditContext, Editor
from editgate.editors.memit import memit_layers, spread_over_layers
from editgate.editors.rome import TemplateLengths
from editgate.edits import EditRequest
from editgate.fingerprint import code_fingerprint, compute_environment
from editgate.models import LoadedModel
from editgate.stats import second_moments

STATE_KEY = "alphaedit.keys.{layer}"


@dataclass(frozen=True)
class AlphaEditHParams:
    """Defaults: the AlphaEdit repository's ``hparams/AlphaEdit/EleutherAI_gpt-j-6B.json``."""

    layers: tuple[int, ...] = (4, 5, 6, 7, 8)
    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the null space
    nullspace_relative: bool = False  # True: the threshold is a fraction of the largest eigenvalue
    l2: float = 10.0  # α (L2)
    mom2_tokens: int = 100_000
    # Targets: MEMIT's z optimisation.
    steps: int = 25
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    early_stop_loss: float = 0.05
    context_template_length_params: TemplateLengths = ((10, 5),)
    autocast_bf16: bool = False
    through_post_norm: bool = True  # as MEMIT's: invert a post-MLP norm (Gemma 2/3)


class AlphaEdit(Editor):
    name = "alphaedit"
    HParams = AlphaEditHParams
    can_batch = True

    def default_hparams(self, lm: LoadedModel) -> dict[str, Any]:
        return {"layers": memit_layers(lm)}

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: AlphaEditHParams,
             ) -> WeightDelta:
        moments = second_moments(ctx.lm, hp.layers, ctx.data_dir, n_tokens=hp.mom2_tokens)
        new_keys: dict[int, torch.Tensor] = {}

        def solve(layer: int, keys: torch.Tensor, residual: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
            new_keys[layer] = keys
            projection = null_space_projection(moments[layer], hp.nullspace_threshold,
                                               relative=hp.nullspace_relative)
            past = ctx.state.get(STATE_KEY.format(layer=layer))
            return null_space_update(keys, residual, projection, past, hp.l2)

        updates = spread_over_layers(ctx, requests, hp, solve)
        for layer, keys in new_keys.items():  # only once the whole edit succeeded
            past = ctx.state.get(STATE_KEY.format(layer=layer))
            keys = keys.float().cpu()
            ctx.state[STATE_KEY.format(layer=layer)] = keys if past is None else torch.cat([past, keys])
        return WeightDelta(updates, {"editor": self.name, "layers": ",".join(map(str, hp.layers))})


def null_space_update(keys: torch.Tensor, residual: torch.Tensor, projection: torch.Tensor,
                      past_keys: torch.Tensor | None, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Δ = Rᵀ Yᵀ with Y = (P(KᵀK + K_pᵀK_p) + αI)⁻¹ P Kᵀ, as (left = Rᵀ, right = Y)."""
    k64 = keys.double()
    p64 = projection.to(keys.device).double()
    gram = k64.T @ k64
    if past_keys is not None and len(past_keys):
        past = past_keys.to(keys.device).double()
        gram = gram + past.T @ past
    system = p64 @ gram + l2 * torch.eye(len(p64), dtype=torch.float64, device=keys.device)
    right = torch.linalg.solve(system, p64 @ k64.T)
    return residual.double().T.float(), right.float()


def null_space_projection(moment: torch.Tensor, threshold: float, *, relative: bool = False,
                          ) -> torch.Tensor:
    """P = Û Ûᵀ over the eigenvectors of C with eigenvalue < threshold (× the largest eigenvalue
    when ``relative``), float32, cached."""
    path = cache_path("projections", cache_key(
        moment=tensors_digest({"moment": moment}), threshold=threshold, relative=relative,
        code=code_fingerprint(null_space_projection), environment=compute_environment("cpu")),
        ".safetensors")

    def compute() -> torch.Tensor:
        values, vectors = torch.linalg.eigh(moment.double().cpu())
        null = vectors[:, values < (threshold * values.max() if relative else threshold)]
        return (null @ null.T).float()

    return get_or_compute(
        path, compute,
        save=lambda p, tmp: save_file({"projection": p.contiguous()}, str(tmp)),
        load=lambda file: load_file(str(file))["projection"])
