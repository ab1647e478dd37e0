r"""MEND — Model Editor Networks with Gradient Decomposition (Mitchell et al., 2022, arXiv 2110.11309).

Fine-tuning on one edit moves a weight W (here: the MLP output projection of each edited layer) by
its gradient, which for a linear layer is a sum of rank-one terms over the tokens t of the edit::

    ∇_W L = Σ_t δ_t u_tᵀ,     u_t = the layer's input (key),  δ_t = ∂L/∂(layer output at t)

Raw gradients make poor edits (too small, or too broad). MEND learns, per edited layer l, a small
*gradient network* g_l that maps each token's factors to new ones, and applies

    (ũ_t, δ̃_t) = g_l(u_t, δ_t),      ΔW_l = −α_l Σ_t δ̃_t ũ_tᵀ

with a learned step α_l. g_l normalises [u; δ] (per-dimension mean/std over training edits),
passes it through a residual MLP with low-rank weights, z ← z + B relu(A z + b) (B = 0 at
initialisation, so g starts as the identity), and splits the result back into (ũ, δ̃). The edit
stays low rank (≤ number of tokens) and needs one forward/backward pass: editing is instant.

**Training** (on CounterFact-train, disjoint from the edit split) fits g and α so that edits
work *and* stay local. For a batch of edits (x_e → y_e) with a paraphrase x'_e and an unrelated
locality prompt x_loc, the factors come from the unedited model, ΔW from g, and::

    L = c_edit · ½ [−log P_W+ΔW(y_e | x_e) − log P_W+ΔW(y_e | x'_e)]
      + c_loc  · KL(P_W(· | x_loc) ‖ P_W+ΔW(· | x_loc))        (mean over x_loc's positions)

The base model never changes; only g and α are trained (Adam). The result is cached by model
fingerprint, edited layers, training config and data hash (``editgate cache``: ``mend/``): later
runs load it, never retrain. Train explicitly with::

    python -m editgate.editors.mend train --config small   # CI size (~2 min on 2 CPU cores)
    python -m editgate.editors.mend train --config full    # real use (see hparams/mend.toml)

When the suite runs ``mend`` and the selected config is not cached, it is trained on the spot.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tomllib
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from editgate.cache import cache_path, get_or_compute
from editgate.delta import WeightDelta, lowrank_update
from editgate.editors.base import HPARAMS_DIR, Batch, EditContext, Editor, weight_out_in
from editgate.edits import COUNTERFACT, EditRequest, _counterfact_request
from editgate.errors import ConfigError, DataError
from editgate.fingerprint import compute_key
from editgate.models import LoadedModel


@dataclass(frozen=True)
class MENDHParams:
    layers: tuple[int, ...] = ()  # () = the last three layers (as the paper)
    config: str = "small"  # training config: [train.<config>] in hparams/mend.toml


@dataclass(frozen=True)
class TrainConfig:
    examples: int = 400  # CounterFact-train edits seen per epoch
    epochs: int = 1
    batch_size: int = 8
    rank: int = 64  # of the gradient networks' hidden weights
    hidden_layers: int = 1
    lr: float = 1e-3  # gradient networks
    lr_lr: float = 1e-4  # α (the per-layer edit step sizes)
    edit_lr: float = 1e-4  # α at initialisation
    c_edit: float = 0.1
    c_loc: float = 1.0
    norm_examples: int = 32  # edits used to estimate the factors' mean and std
    grad_clip: float = 100.0
    autocast_bf16: bool = True  # bfloat16 forward passes (factors and, in training, the edit)
    seed: int = 0


def train_config(name: str) -> TrainConfig:
    """``[train.<name>]`` of hparams/mend.toml over the dataclass defaults."""
    with open(HPARAMS_DIR / "mend.toml", "rb") as handle:
        configs = tomllib.load(handle).get("train", {})
    if name not in configs:
        raise ConfigError(f"mend: unknown training config {name!r}; known: {', '.join(configs)}")
    try:
        return TrainConfig(**configs[name])
    except TypeError as exc:
        raise ConfigError(f"mend: training config {name!r}: {exc}") from None


def mend_layers(lm: LoadedModel, hp: MENDHParams) -> tuple[int, ...]:
    return hp.layers or tuple(range(max(0, lm.num_layers - 3), lm.num_layers))


# --------------------------------------------------------------------------- the networks


class LowRankResidual(nn.Module):
    """z ← z + B relu(A z + b), A: [rank, d], B: [d, rank] = 0 at init (an identity map)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.up(F.relu(self.down(z)))


class GradientNet(nn.Module):
    """g_l: (u [N, d_in], δ [N, d_out]) → (ũ, δ̃), on normalised inputs."""

    def __init__(self, d_in: int, d_out: int, rank: int, hidden_layers: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.register_buffer("mean", torch.zeros(d_in + d_out))
        self.register_buffer("std", torch.ones(d_in + d_out))
        self.blocks = nn.Sequential(*[LowRankResidual(d_in + d_out, rank)
                                      for _ in range(hidden_layers)])

    def forward(self, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (torch.cat([u, delta], -1) - self.mean) / self.std
        u_tilde, delta_tilde = self.blocks(z).split([self.d_in, self.d_out], -1)
        return u_tilde, delta_tilde


class MENDNetwork(nn.Module):
    """One gradient network and one step size α_l per edited layer."""

    def __init__(self, shapes: dict[int, tuple[int, int]], config: TrainConfig) -> None:
        super().__init__()
        self.layers = sorted(shapes)
        self.nets = nn.ModuleDict({str(layer): GradientNet(d_in, d_out, config.rank,
                                                           config.hidden_layers)
                                   for layer, (d_out, d_in) in shapes.items()})
        self.alphas = nn.Parameter(torch.full((len(shapes),), config.edit_lr))
        self.train_seconds = float("nan")  # recorded by train(), kept in the cached file

    def factors_to_update(self, layer: int, u: torch.Tensor, delta: torch.Tensor,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(left = −α_l δ̃ᵀ [d_out, N], right = ũᵀ [d_in, N]): ΔW_l = left @ rightᵀ."""
        u_tilde, delta_tilde = self.nets[str(layer)](u, delta)
        return -self.alphas[self.layers.index(layer)] * delta_tilde.T, u_tilde.T


# --------------------------------------------------------------------------- the editor


class MEND(Editor):
    name = "mend"
    HParams = MENDHParams
    can_batch = True

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: MENDHParams,
             ) -> WeightDelta:
        lm = ctx.lm
        layers = mend_layers(lm, hp)
        network = trained_network(lm, layers, hp.config, ctx.data_dir)
        factors = edit_factors(lm, layers, requests, train_config(hp.config).autocast_bf16)
        updates = {}
        with torch.no_grad():
            for layer in layers:
                u = torch.cat([f[layer][0] for f in factors])  # all tokens of all requests
                delta = torch.cat([f[layer][1] for f in factors])
                left, right = network.factors_to_update(layer, u, delta)
                updates[lm.layout.weight_name(layer)] = lowrank_update(
                    lm.layout.transposed, left.contiguous(), right.contiguous())
        return WeightDelta(updates, {"editor": self.name, "config": hp.config})


Factors = dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer → (u [T, d_in], δ [T, d_out])


def _target_rows(lm: LoadedModel, prompts: Sequence[str], targets: Sequence[str],
                 ) -> tuple[Batch, list[tuple[int, int, int]]]:
    """Rows ``prompt + target[:-1]`` and (row, position, token) for every target token."""
    rows, positions = [], []
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        context, answer = lm.encode(prompt, bos=True), lm.encode(target)
        rows.append(context + answer[:-1])
        positions.extend((row, len(context) - 1 + t, token) for t, token in enumerate(answer))
    return Batch.of(lm, rows), positions


def _mean_nll(lm: LoadedModel, hidden: torch.Tensor, positions: list[tuple[int, int, int]],
              n_rows: int) -> torch.Tensor:
    """Per-row mean NLL of the target tokens, [n_rows] (logits only where needed)."""
    index = torch.tensor(positions, device=hidden.device)
    log_probs = F.log_softmax(lm.head_logits(hidden[index[:, 0], index[:, 1]].float()), -1)
    nll = -log_probs.gather(-1, index[:, 2:3])[:, 0]
    sums = torch.zeros(n_rows, device=hidden.device).index_add(0, index[:, 0], nll)
    return sums / torch.bincount(index[:, 0], minlength=n_rows).clamp_min(1)


@contextmanager
def _capture_factors(lm: LoadedModel, layers: Sequence[int]) -> Iterator[dict[int, dict]]:
    """Record each layer's input u and make its output a graph node whose .grad is δ."""
    records: dict[int, dict] = {layer: {} for layer in layers}

    def hook(layer: int) -> Callable:
        def capture(mod: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad:  # the lowest edited layer: backward stops here
                output.requires_grad_()
            output.retain_grad()
            records[layer]["u"], records[layer]["out"] = args[0].detach(), output
        return capture

    handles = [lm.module(lm.layout.out_proj_name(layer)).register_forward_hook(hook(layer))
               for layer in layers]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def edit_factors(lm: LoadedModel, layers: Sequence[int], requests: Sequence[EditRequest],
                 autocast_bf16: bool) -> list[Factors]:
    """Per request, each layer's (u_t, δ_t) over the request's tokens, from one fwd/bwd pass.

    The loss is each request's mean NLL of target_new after its prompt, on the current weights.
    """
    return _factor_pass(lm, layers, requests, autocast_bf16)[0]


def _factor_pass(lm: LoadedModel, layers: Sequence[int], requests: Sequence[EditRequest],
                 autocast_bf16: bool, extra: Batch | None = None,
                 ) -> tuple[list[Factors], torch.Tensor | None]:
    """:func:`edit_factors`; rows of ``extra`` ride along without loss (training's locality
    reference) and their final hidden states are returned too."""
    batch, positions = _target_rows(lm, [r.prompt for r in requests],
                                    [r.target_new for r in requests])
    if extra is not None:
        batch = _stack(lm, [batch, extra])
    with torch.enable_grad(), _capture_factors(lm, layers) as records:
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            hidden = lm.decoder(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
        _mean_nll(lm, hidden.float(), positions, len(requests)).sum().backward()
    lengths = batch.mask.sum(1).tolist()
    factors = [{layer: (records[layer]["u"][row, :lengths[row]].float(),
                        records[layer]["out"].grad[row, :lengths[row]].float())
                for layer in layers} for row in range(len(requests))]
    return factors, None if extra is None else hidden[len(requests):].detach()


def _stack(lm: LoadedModel, batches: Sequence[Batch]) -> Batch:
    """Right-pad several batches to one width and stack their rows."""
    width = max(b.ids.shape[1] for b in batches)
    pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)
    return Batch(torch.cat([pad(b.ids, lm.tokenizer.pad_token_id) for b in batches]),
                 torch.cat([pad(b.mask, 0) for b in batches]))


# --------------------------------------------------------------------------- training


def training_requests(data_dir: Path, count: int, seed: int) -> tuple[list[EditRequest], str]:
    """``count`` CounterFact-train edits with a paraphrase and a locality prompt (shuffled)."""
    from editgate.data import load_dataset

    spec = dataclasses.replace(COUNTERFACT, filename="counterfact-train.jsonl")
    dataset = load_dataset(spec, data_dir)
    requests = []
    for record in dataset.records:
        try:
            request = _counterfact_request(record)
        except DataError:
            continue  # a few records violate the edit-request rules; MEND just skips them
        if request.paraphrase_prompts and request.neighborhood_prompts:
            requests.append(request)
    order = torch.randperm(len(requests), generator=torch.Generator().manual_seed(seed))
    chosen = [requests[i] for i in order[:count].tolist()]
    if len(chosen) < count:
        raise DataError(f"only {len(chosen)} usable training edits, {count} asked for",
                        path=spec.local_path(data_dir))
    return chosen, dataset.fingerprint


def trained_network(lm: LoadedModel, layers: Sequence[int], config_name: str, data_dir: Path,
                    log: Callable[[str], None] | None = None) -> MENDNetwork:
    """The trained MEND network for (model, layers, config, data): loaded, or trained once."""
    config = train_config(config_name)
    from editgate.cache import file_sha256

    data_hash = file_sha256(data_dir / "counterfact" / "counterfact-train.jsonl")
    path = cache_path("mend", compute_key(lm, trained_network, layers=list(layers),
                                          config=dataclasses.asdict(config), data=data_hash),
                      ".safetensors")
    shapes = {layer: tuple(weight_out_in(lm, layer).shape) for layer in layers}

    def load(file: Path) -> MENDNetwork:
        network = MENDNetwork(shapes, config)
        network.load_state_dict(load_file(str(file)))
        with safe_open(str(file), framework="pt") as handle:
            network.train_seconds = float((handle.metadata() or {}).get("train_seconds", "nan"))
        return network.to(lm.device).eval().requires_grad_(False)

    def save(network: MENDNetwork, tmp: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()},
                  str(tmp), metadata={"train_seconds": f"{network.train_seconds:.1f}"})

    def train_now() -> MENDNetwork:
        say = log or (lambda text: print(f"[mend] {text}", file=sys.stderr, flush=True))
        say(f"no trained network for config {config_name!r} in the cache: training ({path.name})")
        return train(lm, layers, config, data_dir, say).eval().requires_grad_(False)

    return get_or_compute(path, train_now, save, load)


def train(lm: LoadedModel, layers: Sequence[int], config: TrainConfig, data_dir: Path,
          log: Callable[[str], None]) -> MENDNetwork:
    """Fit the gradient networks and step sizes as in the module docstring."""
    torch.manual_seed(config.seed)
    requests, _ = training_requests(data_dir, config.examples, config.seed)
    shapes = {layer: tuple(weight_out_in(lm, layer).shape) for layer in layers}
    network = MENDNetwork(shapes, config).to(lm.device)
    _set_normalisation(lm, network, requests[:config.norm_examples], config)
    optimizer = torch.optim.Adam([
        {"params": list(network.nets.parameters()), "lr": config.lr},
        {"params": [network.alphas], "lr": config.lr_lr}])
    start = time.perf_counter()
    steps = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(requests), generator=torch.Generator().manual_seed(
            config.seed + epoch)).tolist()
        for first in range(0, len(order), config.batch_size):
            batch = [requests[i] for i in order[first:first + config.batch_size]]
            edit_loss, loc_loss = _training_losses(lm, network, batch, config)
            loss = config.c_edit * edit_loss + config.c_loc * loc_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
            optimizer.step()
            steps += 1
            if steps % 10 == 0 or first + config.batch_size >= len(order):
                log(f"epoch {epoch + 1}/{config.epochs} step {steps}: edit NLL "
                    f"{edit_loss.item():.3f}, locality KL {loc_loss.item():.4f}, "
                    f"α {network.alphas.detach().cpu().numpy().round(6).tolist()}, "
                    f"{time.perf_counter() - start:.0f} s")
    network.train_seconds = time.perf_counter() - start
    log(f"trained {steps} steps on {len(requests)} edits in {network.train_seconds:.1f} s")
    return network


@torch.no_grad()
def _set_normalisation(lm: LoadedModel, network: MENDNetwork, requests: Sequence[EditRequest],
                       config: TrainConfig) -> None:
    factors = edit_factors(lm, network.layers, requests, config.autocast_bf16)
    for layer in network.layers:
        z = torch.cat([torch.cat(f[layer], -1) for f in factors])
        net = network.nets[str(layer)]
        net.mean.copy_(z.mean(0))
        net.std.copy_(z.std(0).clamp_min(1e-6))


def _training_losses(lm: LoadedModel, network: MENDNetwork, batch: Sequence[EditRequest],
                     config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(edit NLL on x_e and x'_e, locality KL on x_loc) after each example's own MEND edit."""
    n = len(batch)
    loc_batch = Batch.of(lm, [lm.encode(r.neighborhood_prompts[0], bos=True) for r in batch])
    loc_mask = loc_batch.mask.bool()
    factors, base_hidden = _factor_pass(lm, network.layers, batch, config.autocast_bf16, loc_batch)
    assert base_hidden is not None
    base_log_probs = F.log_softmax(
        lm.head_logits(base_hidden[:, :loc_mask.shape[1]][loc_mask].float()), -1)

    # Edited forward: rows [edit prompts | paraphrases | locality], row r uses example r % n's ΔW.
    target_batch, positions = _target_rows(
        lm, [r.prompt for r in batch] + [r.paraphrase_prompts[0] for r in batch],
        [r.target_new for r in batch] * 2)
    rows = _stack(lm, [target_batch, loc_batch])
    example = torch.arange(3 * n, device=lm.device) % n
    updates = {}
    for layer in network.layers:  # padded per-example factor stacks: U [n, T, d_in], D [n, T, d_out]
        lefts, rights = zip(*(network.factors_to_update(layer, *f[layer]) for f in factors))
        updates[layer] = (nn.utils.rnn.pad_sequence([r.T for r in rights], batch_first=True),
                          nn.utils.rnn.pad_sequence([left.T for left in lefts], batch_first=True))

    def add_update(layer: int) -> Callable:
        def hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            u_stack, d_stack = updates[layer]
            x = args[0].float()
            change = (x @ u_stack[example].transpose(1, 2)) @ d_stack[example]
            return output + change.to(output.dtype)
        return hook

    handles = [lm.module(lm.layout.out_proj_name(layer)).register_forward_hook(add_update(layer))
               for layer in network.layers]
    try:
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=config.autocast_bf16):
            hidden = lm.decoder(input_ids=rows.ids, attention_mask=rows.mask).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    hidden = hidden.float()
    edit_loss = _mean_nll(lm, hidden[:2 * n], positions, 2 * n).mean()
    loc_hidden = hidden[2 * n:, :loc_mask.shape[1]][loc_mask]
    edited_log_probs = F.log_softmax(lm.head_logits(loc_hidden), -1)
    kl = (base_log_probs.exp() * (base_log_probs - edited_log_probs)).sum(-1)  # per position
    return edit_loss, kl.mean()


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editgate.editors.mend",
                                     description="Train (and cache) MEND's gradient networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cmd = sub.add_parser("train", help="train a config unless it is already cached")
    train_cmd.add_argument("--config", default="small", help="[train.<name>] in hparams/mend.toml")
    train_cmd.add_argument("--model", default="smollm2-135m")
    train_cmd.add_argument("--data-dir", default=None)
    train_cmd.add_argument("--layers", default="", help="comma-separated (default: last three)")
    args = parser.parse_args(argv)

    from editgate.data import resolve_data_dir
    from editgate.models import load_model

    lm = load_model(args.model)
    layers = tuple(int(x) for x in args.layers.split(",") if x.strip())
    hp = dataclasses.replace(MEND().hparams(lm), config=args.config, **(
        {"layers": layers} if layers else {}))
    start = time.perf_counter()
    trained_network(lm, mend_layers(lm, hp), hp.config, resolve_data_dir(args.data_dir),
                    log=lambda text: print(text, flush=True))
    print(f"mend config {args.config!r} for {args.model}: ready in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

