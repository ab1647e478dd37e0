r"""KN — knowledge neurons (Dai et al., 2022, arXiv 2104.08696), as EasyEdit implements it.

Dai et al. read the FFN of a transformer as a key-value memory: each intermediate neuron i weights
its *value vector* W[:, i] (a column of the MLP output projection W) written into the residual
stream. A fact is stored in the few neurons whose activation makes the answer likely. The default
below is EasyEdit's KN (``easyeditor/models/kn``, a port of EleutherAI's ``knowledge-neurons``),
step by step; what editgate did before is kept as named options (end of this docstring).

1. **Neuron activations.** A neuron's activation g_i is read at the *output of the MLP's first
   projection* at the prompt's last position: GPT-2's ``c_fc``, the gated MLPs' ``gate_proj`` —
   i.e. before the nonlinearity (EasyEdit's ``input_ff_attr``). For a gated MLP, scaling g_i scales
   act(g_i)·up_i, so the path differs from scaling the key k_i = act(g_i)·up_i.

2. **Attribution** of the answer token y by integrated gradients with m steps on α ∈
   linspace(0, 1, m) (both ends included), one layer at a time (the others clean)::

       Attr(g_i) = g_i / m · Σ_{α} ∂P(y | x; g ← α g) / ∂g_i

   For an answer of several tokens y₁…y_n the attributions are averaged over tokens. Token j is
   scored either at the end of the prompt extended by the model's own greedy tokens 1…j−1
   (``multi_token = "greedy"``: EasyEdit's branch for LLaMA, Qwen, Mistral, …, which appends the
   decoded greedy token to the prompt text and re-tokenises), or at the prompt's last position
   (``"last_prompt"``: EasyEdit's GPT-2 branch, which never re-tokenises). The attributed answer is
   the *true* target. With m = 1 (EasyEdit's LLaMA configs) linspace gives α = 0 only: the
   gradient at zero activation times g.

3. **Selection.** Over all layers at once, keep the neurons with Attr > ``threshold`` × max Attr
   (EasyEdit's ``adaptive_threshold`` 0.2). EasyEdit edits with one prompt (the edit prompt) and
   ``refine: false``, so this set is final.

4. **Edit.** With e(·) the input word embedding, y' = target_new's tokens and p = the model's
   greedy continuation of the prompt for as many tokens (re-tokenised text, as above), every
   selected neuron's value vector moves by the same vector::

       W[:, i] += e(y'₁) − 2 e(p₁)                       if target_new is one token
       W[:, i] += Σ_j e(y'_j) − Σ_j e(p_j)               otherwise

   (EasyEdit's ``modify_weights``: the target embeddings are indexed with a list, so they are
   added once each; a single predicted token is an int, so it is subtracted twice.) Per layer this
   is the rank-one ΔW = d sᵀ with s the indicator of the layer's selected neurons.

Efficiency: changing an activation at the *last* position cannot change any earlier position
(causal attention), so the prompt's prefix runs once into a KV cache and all (layer, α) cases —
``len(layers)`` × ``ig_steps`` rows — run as one batch of single tokens on top of it, with one
backward pass giving every gradient. Exact, and ~100× cheaper than EasyEdit's re-running of
whole prompts per layer. KN does not use the subject: it edits whatever the prompt's answer
neurons are, which is why it generalises poorly and disturbs neighbours.

**Named options** (defaults = EasyEdit). editgate's former rule, which the options together
restore (``prompts = 3, first_token_only = true, edit_rule = "scaled", site = "key"``):
``prompts`` > 1 adds model-generated prefixed variants of the prompt and keeps the neurons found
in more than ``share`` of them (Dai et al.'s refinement; EasyEdit's ``refine``), meant to drop
neurons tied to one wording; ``first_token_only`` attributes and edits the first answer token
only; ``edit_rule = "scaled"`` is the paper's W[:, i] += sign(ā_i)(λ₂ e(y'₁) − λ₁ e(y₁)) with the
true answer y erased (λ₁ = 1, λ₂ = 8; the sign because gated MLPs have signed activations, so a
negative neuron's value would otherwise move toward the old answer); ``site = "key"`` reads and
scales the input of the output projection, the paper's neuron. ``autocast_bf16`` runs the
attribution pass in bfloat16.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editgate.delta import WeightDelta, lowrank_update
from editgate.editors.base import EditContext, Editor, weight_out_in
from editgate.editors.mlp import in_proj_name
from editgate.editors.rome import context_templates
from editgate.edits import EditRequest
from editgate.errors import ConfigError
from editgate.models import LoadedModel

SITES = ("pre_activation", "key")
MULTI_TOKEN = ("greedy", "last_prompt")
EDIT_RULES = ("easyedit", "scaled")


@dataclass(frozen=True)
class KNHParams:
    layers: tuple[int, ...] = ()  # () = every layer
    ig_steps: int = 20  # m: α ∈ linspace(0, 1, m)
    threshold: float = 0.2  # relative to the largest attribution over all layers
    multi_token: str = "greedy"  # "greedy" | "last_prompt" (see step 2)
    # Named options (defaults: EasyEdit; see the docstring's last paragraph).
    prompts: int = 1  # the edit prompt + (prompts − 1) model-generated prefixed variants
    share: float = 0.4  # p: with several prompts, keep neurons found in more than p × prompts
    context_length: int = 10  # tokens per generated prefix
    first_token_only: bool = False
    edit_rule: str = "easyedit"  # "easyedit" | "scaled"
    erase_scale: float = 1.0  # λ₁ (edit_rule = "scaled")
    add_scale: float = 8.0  # λ₂ (edit_rule = "scaled")
    site: str = "pre_activation"  # "pre_activation" (EasyEdit) | "key" (the paper's neuron)
    autocast_bf16: bool = False  # the batched attribution pass


class KN(Editor):
    name = "kn"
    version = "2"  # EasyEdit's rule by default (v1: three prompts, first token, +8/−1)
    HParams = KNHParams
    can_batch = False

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: KNHParams,
             ) -> WeightDelta:
        if len(requests) != 1:
            raise ValueError(f"{self.name} edits one request per call, got {len(requests)}")
        for option, value, allowed in (("site", hp.site, SITES), ("edit_rule", hp.edit_rule,
                                       EDIT_RULES), ("multi_token", hp.multi_token, MULTI_TOKEN)):
            if value not in allowed:
                raise ConfigError(f"kn: {option} = {value!r}; choose one of {allowed}")
        request, lm = requests[0], ctx.lm
        layers = list(hp.layers) or list(range(lm.num_layers))
        prompts = [request.prompt] if hp.prompts <= 1 else [
            t.format(request.prompt)
            for t in context_templates(lm, hp.prompts - 1, hp.context_length, ctx.seed)]
        true_tokens = lm.encode(request.target_true)
        new_tokens = lm.encode(request.target_new)
        if hp.first_token_only:
            true_tokens, new_tokens = true_tokens[:1], new_tokens[:1]

        votes: dict[tuple[int, int], int] = {}
        activation_sum = torch.zeros(len(layers), weight_out_in(lm, layers[0]).shape[1],
                                     device=lm.device)
        for prompt in prompts:
            attributions, activations = answer_attributions(lm, prompt, true_tokens, layers, hp)
            activation_sum += activations
            for neuron in select_neurons(attributions, layers, hp.threshold):
                votes[neuron] = votes.get(neuron, 0) + 1
        # EasyEdit's refine: strictly more than p × prompts (one prompt: every coarse neuron).
        chosen = sorted(n for n, count in votes.items()
                        if len(prompts) == 1 or count > hp.share * len(prompts))

        embeddings = lm.model.get_input_embeddings().weight.detach().float()
        if hp.edit_rule == "easyedit":
            predicted = greedy_tokens(lm, request.prompt, len(new_tokens))
            direction = embeddings[new_tokens].sum(0)
            direction -= (2 * embeddings[predicted[0]] if len(new_tokens) == 1
                          else embeddings[predicted].sum(0))
        else:
            direction = (hp.add_scale * embeddings[new_tokens[0]]
                         - hp.erase_scale * embeddings[true_tokens[0]])
        updates = {}
        for layer in sorted({layer for layer, _ in chosen}):
            neurons = [i for l_, i in chosen if l_ == layer]
            indicator = torch.zeros(weight_out_in(lm, layer).shape[1], device=direction.device)
            # "scaled": sign(ā_i), so a neuron that fires negatively moves the other way.
            indicator[neurons] = (activation_sum[layers.index(layer), neurons].sign()
                                  if hp.edit_rule == "scaled" else 1.0)
            updates[lm.layout.weight_name(layer)] = lowrank_update(
                lm.layout.transposed, direction.clone(), indicator)
        return WeightDelta(updates, {"editor": self.name, "neurons": str(len(chosen))})


def select_neurons(attributions: torch.Tensor, layers: Sequence[int], threshold: float,
                   ) -> list[tuple[int, int]]:
    """(layer, neuron) pairs whose attribution exceeds ``threshold`` × the largest one."""
    cutoff = threshold * attributions.max()
    rows, cols = torch.nonzero(attributions > cutoff, as_tuple=True)
    return [(layers[r], int(c)) for r, c in zip(rows.tolist(), cols.tolist())]


@torch.no_grad()
def greedy_tokens(lm: LoadedModel, prompt: str, count: int) -> list[int]:
    """The model's greedy continuation, one token at a time on the re-tokenised text (EasyEdit)."""
    tokens, text = [], prompt
    for _ in range(count):
        ids = torch.tensor([lm.encode(text, bos=True)], device=lm.device)
        token = int(lm.model(input_ids=ids).logits[0, -1].argmax())
        tokens.append(token)
        text += lm.tokenizer.decode([token])
    return tokens


def answer_attributions(lm: LoadedModel, prompt: str, answer: Sequence[int], layers: Sequence[int],
                        hp: KNHParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: attributions averaged over the answer's tokens, and the first step's activations."""
    total, first, text = None, None, prompt
    for token in answer:
        attributions, activations = integrated_gradients(
            lm, text, token, layers, hp.ig_steps, hp.autocast_bf16, hp.site)
        total = attributions if total is None else total + attributions
        first = activations if first is None else first
        if hp.multi_token == "greedy" and len(answer) > 1:
            text += lm.tokenizer.decode(greedy_tokens(lm, text, 1))
    assert total is not None and first is not None
    return total / len(answer), first


def _site(lm: LoadedModel, layer: int, site: str) -> tuple[nn.Module, bool]:
    """The module at which a layer's neurons are read, and whether they are its output."""
    if site == "key":
        return lm.module(lm.layout.out_proj_name(layer)), False
    return lm.module(in_proj_name(lm, layer)), True


def integrated_gradients(lm: LoadedModel, prompt: str, token: int, layers: Sequence[int],
                         steps: int, autocast_bf16: bool = False, site: str = "pre_activation",
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Attr(g_i), g_i) for every neuron of ``layers`` at the last position: [len(layers), d_ff]."""
    ids = torch.tensor([lm.encode(prompt, bos=True)], device=lm.device)
    cache_arg = "cache" if "cache" in inspect.signature(lm.model.forward).parameters \
        else "past_key_values"  # transformers renamed the argument during 5.x
    modules = {layer: _site(lm, layer, site) for layer in layers}
    clean: dict[int, torch.Tensor] = {}

    def capture(layer: int, output_side: bool):
        def hook(mod: nn.Module, args: tuple, output: torch.Tensor | None = None) -> None:
            clean[layer] = (output if output_side else args[0])[0, -1].detach().float()
        return hook

    handles = [module.register_forward_hook(capture(layer, True)) if is_output else
               module.register_forward_pre_hook(capture(layer, False))
               for layer, (module, is_output) in modules.items()]
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        cache = getattr(lm.model(input_ids=ids[:, :-1], use_cache=True), cache_arg) \
            if ids.shape[1] > 1 else None

    # One row per (layer, α): row r scales layer layers[r // steps] by α_{r % steps}.
    alphas = torch.linspace(0, 1, steps, device=lm.device)
    scaled = {layer: (alphas[:, None] * clean[layer][None]).requires_grad_() for layer in layers}
    rows = len(layers) * steps

    def replace(layer: int, start: int, output_side: bool):
        def swap(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[start:start + steps, -1] = scaled[layer].to(x.dtype)
            return x

        def forward_hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return swap(output)

        def pre_hook(mod: nn.Module, args: tuple) -> tuple:
            return (swap(args[0]), *args[1:])
        return forward_hook if output_side else pre_hook

    handles = []
    for index, layer in enumerate(layers):
        module, is_output = modules[layer]
        hook = replace(layer, index * steps, is_output)
        handles.append(module.register_forward_hook(hook) if is_output
                       else module.register_forward_pre_hook(hook))
    if cache is not None:
        cache.batch_repeat_interleave(rows)
    inputs = ids[:, -1:] if cache is not None else ids
    try:
        with torch.enable_grad(), torch.autocast(lm.device.type, dtype=torch.bfloat16,
                                                 enabled=autocast_bf16):
            extra = {cache_arg: cache, "use_cache": True} if cache is not None else {}
            logits = lm.model(input_ids=inputs.expand(rows, -1), **extra).logits[:, -1].float()
            probability = logits.softmax(-1)[:, token]
            grads = torch.autograd.grad(probability.sum(), [scaled[layer] for layer in layers])
    finally:
        for handle in handles:
            handle.remove()
    activations = torch.stack([clean[layer] for layer in layers])
    return activations * torch.stack([grad.mean(0) for grad in grads]), activations
