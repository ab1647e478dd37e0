r"""ROME — Rank-One Model Editing (Meng et al., 2022, arXiv 2202.05262).

ROME treats the MLP output projection W (bias b where the architecture has one) of one layer l as a
linear associative memory that maps a *key* k (the MLP's hidden activation at the subject's last
token) to a *value* v = W k + b (the MLP output, written into the residual stream). Rewriting a
fact means storing a new pair (k*, v*):

1. **Key.** k* is the mean key at the subject's last token over the plain prompt and a few
   prefixed contexts ("<sampled text>. {prompt}"), so the edit fires regardless of what precedes
   the subject. The reference samples 20 prefixes (``context_template_length_params``
   ``((5, 10), (10, 10))``: ten of 5 tokens and ten of 10, counting the start word), 20 + 1 in all.

2. **Value.** v* = v₀ + δ, where v₀ is the MLP output at the subject in the plain prompt and δ is
   optimised with Adam so that adding δ to the layer's MLP output makes the new target likely::

       L(δ) = mean_c −log P(target_new | c(prompt); v ← v + δ)              (efficacy)
              + λ_KL · KL(P(· | "{s} is a"; v ← v + δ) ‖ P(· | "{s} is a"))  (essence drift)
              + λ_wd · ‖δ‖ / ‖v₀‖²                                           (norm penalty)

   exactly as kmeng01/rome's ``compute_v.py`` writes it: the KL is the edited distribution's
   divergence from the unedited one (``kl_div(init, new, log_target=True)``), and the penalty is
   ‖δ‖ — not ‖δ‖² — over ‖v₀‖². ‖δ‖ is clamped to ``clamp_norm_factor``·‖v₀‖ after every step;
   the loop stops once the *total* loss is below ``early_stop_loss``, and its last iteration only
   evaluates (``steps`` forward passes, at most ``steps − 1`` updates), as the reference's does.

3. **Update.** The rank-one ΔW that maps k to v* while disturbing other keys least — least change
   measured under the key covariance C = E[k kᵀ] over generic text — is::

       ΔW = (v* − (W k + b)) uᵀ / (uᵀ k),   u = C⁻¹ k*

   Original ROME evaluates ``k`` here at the plain prompt's key while u is built from the
   prefix-averaged k*; R-ROME (Gupta et al., 2024, arXiv 2403.07175) showed this mismatch collapses
   models under sequential edits and uses k = k* consistently (``consistent_key=True``). The bias
   matters on GPT-2/GPT-J/NeoX: leaving it out makes the edited output overshoot v* by b.

Without covariance statistics (``mom2=false``, EasyEdit's LLaMA setting) C = I, i.e. u = k*.

Names: editgate's hyper-parameters map to the reference's as ``layer`` ← ``layers[0]``, ``steps``
← ``v_num_grad_steps``, ``lr`` ← ``v_lr``, ``weight_decay`` ← ``v_weight_decay``, ``mom2`` ←
``mom2_adjustment``; the others keep their names. ``tests/test_reference_rome_memit.py`` checks
this file against kmeng01/rome (and R-ROME against EasyEdit) on fixed inputs.

Deliberate deviation, off by default: ``autocast_bf16`` runs the forward passes of the δ
optimisation under bfloat16 autocast (about 2× faster on CPUs with bf16 matmuls). It changes δ by
the rounding of bf16 activations, not the method; the agreement tests run without it.

This file edits one request per call (ROME cannot batch); sequential regimes call it repeatedly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from editgate.cache import cache_path, json_cache
from editgate.delta import WeightDelta, lowrank_update
from editgate.editors.base import (
    Batch,
    EditContext,
    Editor,
    depth_scaled_layer,
    first_tensor,
    mlp_keys,
    subject_last_token,
    weight_out_in,
)
from editgate.edits import EditRequest
from editgate.fingerprint import compute_key
from editgate.models import LoadedModel
from editgate.stats import second_moments

# (total tokens including the start word, count) per group of sampled prefixes, as the
# references' ``context_template_length_params``: ROME's 10 of 5 tokens and 10 of 10.
TemplateLengths = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ROMEHParams:
    """Defaults: kmeng01/rome's ``hparams/ROME/gpt2-xl.json`` (GPT-J's differs only in layer)."""

    layer: int = 5
    steps: int = 20  # v_num_grad_steps
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5  # λ_wd on ‖δ‖/‖v₀‖²
    clamp_norm_factor: float = 4.0
    early_stop_loss: float = 0.05  # stop once the total loss is this low
    context_template_length_params: TemplateLengths = ((5, 10), (10, 10))
    mom2: bool = True  # whiten with C⁻¹ from the corpus (False: C = I)
    mom2_tokens: int = 100_000
    consistent_key: bool = False  # R-ROME's fix
    # bfloat16 forward passes while optimising δ: about 2x faster on CPUs; a deviation from the
    # float32 reference, so off unless asked for (module docstring).
    autocast_bf16: bool = False


class ROME(Editor):
    name = "rome"
    HParams = ROMEHParams
    can_batch = False

    def default_hparams(self, lm: LoadedModel) -> dict[str, Any]:
        return {"layer": depth_scaled_layer(lm, 5 / 32)}

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: ROMEHParams,
             ) -> WeightDelta:
        if len(requests) != 1:
            raise ValueError(f"{self.name} edits one request per call, got {len(requests)}")
        request = requests[0]
        lm = ctx.lm
        templates = [t for group in context_template_groups(
            lm, hp.context_template_length_params, ctx.seed) for t in group]
        prompts = [t.format(request.prompt) for t in templates]

        k_star = mlp_keys(lm, hp.layer, prompts, [request.subject] * len(prompts)).mean(0)
        k_plain = mlp_keys(lm, hp.layer, [request.prompt], [request.subject])[0]
        v_star = compute_value(lm, request, prompts, hp, lm.layout.out_proj_name(hp.layer))

        moment = (second_moments(lm, [hp.layer], ctx.data_dir, n_tokens=hp.mom2_tokens)[hp.layer]
                  if hp.mom2 else None)
        bias = lm.module(lm.layout.out_proj_name(hp.layer)).bias
        left, right = rank_one_update(weight_out_in(lm, hp.layer).float(), k_star,
                                      k_star if hp.consistent_key else k_plain, v_star, moment,
                                      bias=None if bias is None else bias.detach().float())
        update = lowrank_update(lm.layout.transposed, left, right)
        name = lm.layout.weight_name(hp.layer)
        return WeightDelta({name: update}, {"editor": self.name, "layer": str(hp.layer)})


def rank_one_update(weight: torch.Tensor, k_star: torch.Tensor, key: torch.Tensor,
                    v_star: torch.Tensor, moment: torch.Tensor | None, *,
                    bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW = (v* − (W key + b)) uᵀ / (uᵀ key) with u = C⁻¹ k* (C = I when ``moment`` is None).

    Returns (left [d_out], right [d_in]) with ΔW = left ⊗ right; then (W + ΔW) key + b = v*
    exactly (up to rounding), and any x with uᵀx = 0 — keys "orthogonal under C⁻¹" — is mapped as
    before. Solved in float64.
    """
    weight64, key64 = weight.double(), key.double()
    u = k_star.double() if moment is None else torch.linalg.solve(
        moment.to(weight.device).double(), k_star.double())
    current = weight64 @ key64 if bias is None else weight64 @ key64 + bias.double()
    left = (v_star.double() - current) / (u @ key64)
    return left.float(), u.float()


def context_templates(lm: LoadedModel, count: int, length: int, seed: int) -> list[str]:
    """``["{}"]`` plus ``count`` prefixes of ``length`` sampled tokens after a start word, cached.

    Sampling uses a fixed seed and top-k 5, so the same model always gets the same templates.
    """
    if count == 0:
        return ["{}"]
    path = cache_path("context-templates", compute_key(
        lm, _sample_prefixes, count=count, length=length, seed=seed), ".json")
    return json_cache(path, lambda: ["{}", *_sample_prefixes(lm, count, length, seed)])


def context_template_groups(lm: LoadedModel, length_params: TemplateLengths, seed: int,
                            ) -> list[list[str]]:
    """``[["{}"], group₁, …]``: one group of prefixes per (total length, count), cached.

    As the references' ``get_context_templates``: prefixes are sampled from the model itself
    (top-k 5) after the start words "The", "Therefore", "Because", "I", "You" in turn, and a
    group of length L holds sequences of L tokens counting the start word (and BOS where the
    model takes one). ROME uses the flat list, MEMIT averages its keys group by group.
    """
    lengths = [(int(length), int(count)) for length, count in length_params]
    path = cache_path("context-templates", compute_key(
        lm, _sample_prefixes, length_params=lengths, seed=seed), ".json")

    def sample() -> list[list[str]]:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return [["{}"], *(_sample_prefixes(lm, count, length, generator, total_length=True)
                          for length, count in lengths if count > 0)]

    return json_cache(path, sample)


START_WORDS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def _sample_prefixes(lm: LoadedModel, count: int, length: int, seed: int | torch.Generator,
                     *, total_length: bool = False) -> list[str]:
    """``count`` prefixes "<start word> <sampled tokens>. {}" (``length`` sampled tokens, or
    ``length`` tokens in all with ``total_length``), top-k 5."""
    generator = (seed if isinstance(seed, torch.Generator)
                 else torch.Generator(device="cpu").manual_seed(seed))
    prefixes = []
    for index in range(count):
        ids = lm.encode(START_WORDS[index % len(START_WORDS)], bos=True)
        for _ in range(length - len(ids) if total_length else length):
            logits = lm.model(input_ids=torch.tensor([ids], device=lm.device)).logits[0, -1]
            top = logits.float().topk(5)
            choice = torch.multinomial(top.values.softmax(-1).cpu(), 1, generator=generator)
            ids.append(int(top.indices[choice]))
        skip = 1 if lm.prepend_bos else 0
        text = lm.tokenizer.decode(ids[skip:], skip_special_tokens=True)
        # Braces would break str.format; newlines would split the context from the prompt.
        text = text.replace("{", " ").replace("}", " ").replace("\n", " ").strip()
        prefixes.append(text + ". {}")
    return prefixes


def compute_value(lm: LoadedModel, request: EditRequest, prompts: Sequence[str], hp: Any,
                  module_name: str) -> torch.Tensor:
    """v* = v₀ + δ with δ optimised as in the module docstring. Returns a [d] vector.

    δ is added to the output of ``module_name`` at the subject's last token: ROME's MLP output
    projection, or a whole block (the residual stream) for MEMIT's targets. ``hp`` supplies
    steps, lr, kl_factor, weight_decay, clamp_norm_factor, early_stop_loss and autocast_bf16.
    """
    target = lm.encode(request.target_new)
    kl_prompt = f"{request.subject} is a"
    # Rows: each prefixed prompt followed by all but the last target token, then the KL prompt.
    rows, lookup, target_starts = [], [], []
    for prompt in prompts:
        ids = lm.encode(prompt, bos=True)
        rows.append(ids + target[:-1])
        lookup.append(subject_last_token(lm, prompt, request.subject))
        target_starts.append(len(ids) - 1)  # logits here predict the first target token
    rows.append(lm.encode(kl_prompt, bos=True))
    lookup.append(subject_last_token(lm, kl_prompt, request.subject))
    batch = Batch.of(lm, rows)
    n_rewrite = len(prompts)
    module = lm.module(module_name)
    device = lm.device

    # Reference distribution for the KL term and v₀ (prompts[0] is the plain prompt), unedited.
    record: dict[str, torch.Tensor] = {}

    def keep_output(mod: torch.nn.Module, args: tuple, output: Any) -> None:
        record["output"] = first_tensor(output)

    capture = module.register_forward_hook(keep_output)
    try:
        with torch.no_grad():
            hidden = lm.decoder(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
    finally:
        capture.remove()
    v0 = record["output"][0, lookup[0]].detach().float()
    # The LM head at the one KL position only (every row's logits: 350 MB for Gemma's vocabulary).
    kl_reference = F.log_softmax(lm.head_logits(hidden[n_rewrite, lookup[n_rewrite]].float()),
                                 dim=-1).detach()

    delta = torch.zeros_like(v0, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=hp.lr)
    max_norm = hp.clamp_norm_factor * v0.norm()
    rows_index = torch.arange(len(rows), device=device)
    lookup_index = torch.tensor(lookup, device=device)
    target_ids = torch.tensor(target, device=device)
    gather_rows = torch.arange(n_rewrite, device=device)[:, None]
    gather_cols = torch.tensor(target_starts, device=device)[:, None] + torch.arange(
        len(target), device=device)[None, :]

    def add_delta(mod: torch.nn.Module, args: tuple, output: Any) -> Any:
        hidden = first_tensor(output).clone()
        hidden[rows_index, lookup_index] += delta.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = module.register_forward_hook(add_delta)
    try:
        for step in range(hp.steps):
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=hp.autocast_bf16):
                hidden = lm.decoder(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
            hidden = hidden.float()
            # Logits only at the target positions and the KL position (not the whole sequence).
            target_hidden = hidden[gather_rows, gather_cols]  # [n_rewrite, T, d]
            log_probs = F.log_softmax(lm.head_logits(target_hidden), dim=-1)
            nll = -log_probs.gather(-1, target_ids.expand(n_rewrite, -1)[..., None]).mean()
            kl_log_probs = F.log_softmax(lm.head_logits(hidden[n_rewrite, lookup[n_rewrite]]), dim=-1)
            # KL(new ‖ unedited): kl_div(input, target) = Σ p_target (log p_target − input).
            kl = F.kl_div(kl_reference, kl_log_probs, log_target=True, reduction="sum")
            penalty = delta.norm() / v0.norm() ** 2
            loss = nll + hp.kl_factor * kl + hp.weight_decay * penalty
            # As the reference: stop on the total loss; the last pass only evaluates.
            if loss.item() < hp.early_stop_loss or step == hp.steps - 1:
                break
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    finally:
        handle.remove()
    return (v0 + delta).detach()
