r"""KN — knowledge neurons (Dai et al., 2022, arXiv 2104.08696).

Dai et al. read the FFN of a transformer as a key-value memory: the activation a_i of an
intermediate neuron i (the input of the MLP output projection W, the "key") weights that neuron's
*value vector* W[:, i], which is written into the residual stream. A fact is stored in the few
neurons whose activation makes the answer likely.

1. **Attribution.** For a prompt x whose answer's first token is y (the *true* target), and each
   neuron i of each layer, integrated gradients (IG) along the straight line from a = 0 to the
   observed activation ā at the last position::

       Attr(a_i) = ā_i ∫₀¹ ∂P(y | x; a ← α ā) / ∂a_i dα  ≈  ā_i / m · Σ_{j=1..m} ∂P(y | x; a ← (j/m) ā) / ∂a_i

   (only that layer's activation at the last position is scaled; everything else is the clean
   forward pass).

2. **Selection.** Per prompt, keep the neurons with Attr > ``threshold``·max Attr (t = 0.2);
   across ``prompts`` prompts expressing the fact (the edit prompt and model-generated prefixes
   before it, as ROME's contexts), keep the neurons found in at least a ``share`` of them.

3. **Edit** ("updating facts" in the paper): every selected neuron's value vector moves from the
   old answer to the new one, with e(·) the output embedding of an answer's first token::

       W[:, i] ← W[:, i] + sign(ā_i) (λ₂ e(y_new) − λ₁ e(y_true))     (λ₁ = 1, λ₂ = 8 in the paper)

   i.e. per layer the rank-one update ΔW = (λ₂ e_new − λ₁ e_true) sᵀ, s_i = sign(ā_i) on the
   selected set S and 0 elsewhere. The sign is an adaptation: BERT's GELU neurons that carry a
   fact fire positively, but the gated (SwiGLU) MLPs of Llama-family models have signed
   activations, and a neuron with ā_i < 0 writes −W[:, i] — without the sign, KN would push
   those neurons' contribution *toward* the old answer (measured on SmolLM2: the new target's
   margin fell on 3 of 5 edits).

Efficiency: changing the activation at the *last* position cannot change any earlier position
(causal attention), so the prompt's prefix is run once into a KV cache and all (layer, α) cases —
``len(layers)`` × ``ig_steps`` rows — run as one batch of single tokens on top of it, with one
backward pass giving every gradient. Exact, and ~100× cheaper than re-running whole prompts.
KN does not use the subject at all: it edits whatever the prompt's answer neurons are, which is
why it generalises poorly and disturbs neighbours — the paper's (and editgate's) point.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editgate.delta import WeightDelta, lowrank_update
from editgate.editors.base import EditContext, Editor, capture_mlp_io, weight_out_in
from editgate.editors.rome import context_templates
from editgate.edits import EditRequest
from editgate.models import LoadedModel


@dataclass(frozen=True)
class KNHParams:
    layers: tuple[int, ...] = ()  # () = every layer
    ig_steps: int = 20  # m
    threshold: float = 0.2  # t, relative to the prompt's largest attribution
    share: float = 0.4  # p: fraction of prompts a neuron must be selected in (EasyEdit's)
    prompts: int = 3  # the edit prompt + (prompts − 1) prefixed variants
    context_length: int = 10  # tokens per generated prefix
    erase_scale: float = 1.0  # λ₁
    add_scale: float = 8.0  # λ₂
    autocast_bf16: bool = True  # the batched attribution pass (len(layers) × ig_steps rows)


class KN(Editor):
    name = "kn"
    HParams = KNHParams
    can_batch = False

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: KNHParams,
             ) -> WeightDelta:
        if len(requests) != 1:
            raise ValueError(f"{self.name} edits one request per call, got {len(requests)}")
        request = requests[0]
        lm = ctx.lm
        layers = list(hp.layers) or list(range(lm.num_layers))
        templates = context_templates(lm, hp.prompts - 1, hp.context_length, ctx.seed)
        prompts = [t.format(request.prompt) for t in templates]
        true_token = lm.encode(request.target_true)[0]
        new_token = lm.encode(request.target_new)[0]

        votes: dict[tuple[int, int], int] = {}
        activation_sum = torch.zeros(len(layers), weight_out_in(lm, layers[0]).shape[1],
                                     device=lm.device)
        for prompt in prompts:
            attributions, activations = integrated_gradients(lm, prompt, true_token, layers,
                                                             hp.ig_steps, hp.autocast_bf16)
            activation_sum += activations
            for neuron in select_neurons(attributions, layers, hp.threshold):
                votes[neuron] = votes.get(neuron, 0) + 1
        chosen = sorted(n for n, count in votes.items() if count >= hp.share * len(prompts))

        embeddings = lm.model.get_output_embeddings().weight.detach().float()
        direction = hp.add_scale * embeddings[new_token] - hp.erase_scale * embeddings[true_token]
        updates = {}
        for layer in sorted({layer for layer, _ in chosen}):
            # sign(ā_i): a neuron that fires negatively writes −W[:, i], so its value moves the
            # other way (gated MLPs have signed activations; BERT's GELU ones were ~positive).
            neurons = [i for l_, i in chosen if l_ == layer]
            indicator = torch.zeros(weight_out_in(lm, layer).shape[1], device=direction.device)
            indicator[neurons] = activation_sum[layers.index(layer), neurons].sign()
            updates[lm.layout.weight_name(layer)] = lowrank_update(
                lm.layout.transposed, direction.clone(), indicator)
        return WeightDelta(updates, {"editor": self.name, "neurons": str(len(chosen))})


def select_neurons(attributions: torch.Tensor, layers: Sequence[int], threshold: float,
                   ) -> list[tuple[int, int]]:
    """(layer, neuron) pairs whose attribution exceeds ``threshold`` × the largest one."""
    if attributions.max() <= 0:  # nothing supports the answer: no knowledge neurons
        return []
    cutoff = threshold * attributions.max()
    rows, cols = torch.nonzero(attributions > cutoff, as_tuple=True)
    return [(layers[r], int(c)) for r, c in zip(rows.tolist(), cols.tolist())]


def integrated_gradients(lm: LoadedModel, prompt: str, token: int, layers: Sequence[int],
                         steps: int, autocast_bf16: bool = False,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Attr(a_i), ā_i) for every neuron of ``layers`` at the last position: [len(layers), d_ff]."""
    ids = torch.tensor([lm.encode(prompt, bos=True)], device=lm.device)
    cache_arg = "cache" if "cache" in inspect.signature(lm.model.forward).parameters \
        else "past_key_values"  # transformers renamed the argument during 5.x
    with torch.no_grad(), capture_mlp_io(lm, layers) as records:
        lm.model(input_ids=ids)
        clean = {layer: records[layer]["input"][0, -1].float() for layer in layers}  # ā
        cache = getattr(lm.model(input_ids=ids[:, :-1], use_cache=True), cache_arg)

    # One row per (layer, α): row r scales layer layers[r // steps] by α = (r % steps + 1)/steps.
    alphas = torch.arange(1, steps + 1, device=lm.device, dtype=torch.float32) / steps
    scaled = {layer: (alphas[:, None] * clean[layer][None]).requires_grad_() for layer in layers}
    rows = len(layers) * steps

    def replace(layer: int, start: int):
        def hook(mod: torch.nn.Module, args: tuple) -> tuple:
            x = args[0].clone()
            x[start:start + steps, -1] = scaled[layer].to(x.dtype)
            return (x, *args[1:])
        return hook

    handles = [lm.module(lm.layout.out_proj_name(layer)).register_forward_pre_hook(
        replace(layer, index * steps)) for index, layer in enumerate(layers)]
    cache.batch_repeat_interleave(rows)
    try:
        with torch.enable_grad(), torch.autocast(lm.device.type, dtype=torch.bfloat16,
                                                 enabled=autocast_bf16):
            logits = lm.model(input_ids=ids[:, -1:].expand(rows, 1), **{cache_arg: cache},
                              use_cache=True).logits[:, -1].float()
            probability = logits.softmax(-1)[:, token]
            grads = torch.autograd.grad(probability.sum(), [scaled[layer] for layer in layers])
    finally:
        for handle in handles:
            handle.remove()
    activations = torch.stack([clean[layer] for layer in layers])
    return activations * torch.stack([grad.mean(0) for grad in grads]), activations
