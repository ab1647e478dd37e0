r"""MEND — Model Editor Networks with Gradient Decomposition (Mitchell et al., 2022, arXiv 2110.11309).

As EasyEdit implements it (``easyeditor/trainer/algs/MEND.py``, ``local_nn.py``; configs
``hparams/MEND/*.yaml``). Fine-tuning on one edit moves each edited weight W by its gradient, which
for a linear layer is a sum of rank-one terms over the edit's tokens t::

    ∇_W L = Σ_t δ_t u_tᵀ,     u_t = the layer's input,  δ_t = ∂L/∂(layer output at t)

L is the mean NLL of ``target_new``'s tokens after the prompt (teacher-forced; over all target
tokens of the call). MEND learns a small *gradient network* that maps each token's factors to new
ones, and applies

    (ũ_t, δ̃_t) = g_s(u_t, δ_t; mode m),      ΔW = α_W Σ_t δ̃_t ũ_tᵀ

* **Edited weights**: every projection of the MLP in the last three layers (EasyEdit's
  ``inner_params``: ``c_fc``/``c_proj`` on GPT-2, ``gate/up/down_proj`` on gated MLPs).
* **Shared networks with modes** (``shared: true``): one network g_s per weight *shape* s
  (x_dim = the layer's input width, δ_dim = its output width); the m-th weight of that shape
  (m = its index among them, in the ``inner_params`` order) gets its own scale and shift.
* **The network** (``combine: true``, ``mlp_class: IDMLP``, ``init: id``, ``norm: true``): z =
  [(u − μ_u)/(σ_u + 1e−7); (δ − μ_δ)/(σ_δ + 1e−7)] passes through n_hidden + 1 = 2 low-rank
  residual layers  z ← z + relu((U V z + b) ⊙ scale_m + shift_m)  (U: [d, r] = 0 at
  initialisation, V: [r, d] random, r = min(rank, d); EasyEdit applies the relu in every layer)
  and is split back into (ũ, δ̃). Tokens whose u or δ is all zero are skipped (``nz_mask``).
* **Running statistics**: μ and σ are Welford running estimates over every token the network
  sees while training (updated before normalising); frozen when editing.
* **Learned sign and step**: α_W (``edit_lrs``, one per edited weight, initialised to
  ``edit_lr``) is learnt; the update is *added* (W + ΔW) — the network and α learn its direction.

The edit stays low rank (≤ number of tokens) and needs one forward/backward pass: editing is
instant. ΔW is returned as a low-rank update per edited weight.

**Training** (on CounterFact-train, disjoint from the edit split) fits g and α. For each edit
(x_e → y_e) with an unrelated locality prompt x_loc and its answer a_loc, the factors come from the
unedited model, ΔW from g, and (EasyEdit's ``EditTrainer.edit_step``)::

    L = c_edit · (−1/|y_e|) Σ_t log P_W+ΔW(y_e,t | x_e, y_e,<t)
      + c_loc  · mean over a_loc's positions of  KL(P_W(· | x_loc a_loc) ‖ P_W+ΔW(· | x_loc a_loc))

averaged over ``batch_size`` edits per Adam step (EasyEdit: batch 1, ``accumulate_bs`` 10; lr
1e-6 for g, ``lr_lr`` 1e-4 for α, gradients clipped to norm 100). The base model never changes.
The result is cached by model fingerprint, edited weights, training config and data hash
(``editgate cache``: ``mend/``): later runs load it, never retrain. Train explicitly with::

    python -m editgate.editors.mend train --config small   # CI size
    python -m editgate.editors.mend train --config full    # see hparams/mend.toml

**Named options.** What cannot be done here is the reference's training *budget* (lr 1e-6 for up
to 100k edits with validation-based early stopping: GPU-days); the ``[train.*]`` configs in
``hparams/mend.toml`` say how far each departs (``reference`` keeps EasyEdit's schedule for those
who can afford it). ``params = "out"`` edits only the MLP output projection (editgate's former
choice); ``edit_loss = "edit+paraphrase"`` also scores the edit on its paraphrase (the MEND paper's
equivalence neighbour; EasyEdit's trainer scores the edit prompt only); ``autocast_bf16`` runs the
model's forward passes in bfloat16.
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
from editgate.editors.base import HPARAMS_DIR, Batch, EditContext, Editor
from editgate.editors.mlp import mlp_weight_names
from editgate.edits import COUNTERFACT, EditRequest, _counterfact_request
from editgate.errors import ConfigError, DataError
from editgate.fingerprint import compute_key
from editgate.models import LoadedModel


@dataclass(frozen=True)
class MENDHParams:
    layers: tuple[int, ...] = ()  # () = the last three layers (as the paper and EasyEdit)
    params: str = "mlp"  # "mlp": every MLP projection (EasyEdit); "out": the output one only
    config: str = "small"  # training config: [train.<config>] in hparams/mend.toml


@dataclass(frozen=True)
class TrainConfig:
    examples: int = 400  # CounterFact-train edits seen per epoch
    epochs: int = 1
    batch_size: int = 10  # edits per optimiser step (EasyEdit: accumulate_bs)
    rank: int = 1920  # of the networks' low-rank layers (min(rank, x_dim + δ_dim))
    n_hidden: int = 1  # n_hidden + 1 low-rank residual layers
    lr: float = 1e-6  # gradient networks
    lr_lr: float = 1e-4  # α (edit_lrs)
    edit_lr: float = 1e-4  # α at initialisation
    c_edit: float = 0.1
    c_loc: float = 1.0
    grad_clip: float = 100.0
    edit_loss: str = "edit"  # "edit" (EasyEdit) | "edit+paraphrase" (named option)
    autocast_bf16: bool = False  # named option: bf16 forward passes of the model
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


def edited_weights(lm: LoadedModel, hp: MENDHParams) -> list[str]:
    """The edited weights, in EasyEdit's ``inner_params`` order (layer by layer)."""
    if hp.params not in ("mlp", "out"):
        raise ConfigError(f"mend: params = {hp.params!r}; choose 'mlp' or 'out'")
    layers = mend_layers(lm, hp)
    if hp.params == "out":
        return [lm.layout.weight_name(layer) for layer in layers]
    return [name for layer in layers for name in mlp_weight_names(lm, layer)]


def weight_shape(lm: LoadedModel, name: str) -> tuple[int, int]:
    """(input width, output width) of a projection weight, whatever its storage orientation."""
    rows, cols = lm.model.get_parameter(name).shape
    return (rows, cols) if lm.layout.transposed else (cols, rows)


# --------------------------------------------------------------------------- the networks


class LowRankResidual(nn.Module):
    """z ← z + relu((U V z + b) ⊙ scale_m + shift_m): EasyEdit's ``LRLinear`` with init "id"."""

    def __init__(self, dim: int, rank: int, n_modes: int, generator: torch.Generator) -> None:
        super().__init__()
        mid = min(rank, dim)
        self.u = nn.Parameter(torch.zeros(dim, mid))
        self.v = nn.Parameter(torch.randn(mid, dim, generator=generator))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Embedding(n_modes, dim)
        self.mode_shift = nn.Embedding(n_modes, dim)
        nn.init.ones_(self.mode_scale.weight)
        nn.init.zeros_(self.mode_shift.weight)

    def forward(self, z: torch.Tensor, mode: int | None) -> torch.Tensor:
        pre = (self.u @ (self.v @ z.T)).T + self.bias
        if mode is not None:
            pre = pre * self.mode_scale.weight[mode] + self.mode_shift.weight[mode]
        return pre.clamp(min=0) + z


class ResidualMLP(nn.Module):
    """EasyEdit's ``IDMLP``: n_hidden + 1 low-rank residual layers."""

    def __init__(self, dim: int, rank: int, n_hidden: int, n_modes: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.layers = nn.ModuleList([LowRankResidual(dim, rank, n_modes, generator)
                                     for _ in range(n_hidden + 1)])

    def forward(self, z: torch.Tensor, mode: int | None) -> torch.Tensor:
        for layer in self.layers:
            z = layer(z, mode)
        return z


class GradientNet(nn.Module):
    """g_s for one weight shape: (u [N, x_dim], δ [N, δ_dim]) → (ũ, δ̃), EasyEdit's
    ``GradientTransform`` (combine, norm). Buffer names are EasyEdit's, so its state dicts load."""

    def __init__(self, x_dim: int, delta_dim: int, rank: int, n_hidden: int, n_modes: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.x_dim, self.delta_dim = x_dim, delta_dim
        for name, dim in (("u", x_dim), ("v", delta_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
            self.register_buffer(f"{name}_s", torch.zeros(dim))
        self.register_buffer("k", torch.zeros(1))  # tokens seen by the running statistics
        self.mlp = ResidualMLP(x_dim + delta_dim, rank, n_hidden, n_modes, generator)

    @torch.no_grad()
    def observe(self, u: torch.Tensor, v: torch.Tensor) -> None:
        """Welford's running mean and variance, one token at a time (as EasyEdit's loop)."""
        for row in range(u.shape[0]):
            if self.k.item() == 0:
                self.u_mean.copy_(u[row])
                self.v_mean.copy_(v[row])
                self.u_s.zero_()
                self.v_s.zero_()
                self.k.fill_(1)
                continue
            self.k += 1
            for x, mean, s in ((u[row], self.u_mean, self.u_s), (v[row], self.v_mean, self.v_s)):
                new_mean = mean + (x - mean) / self.k
                s.copy_(s + (x - mean) * (x - new_mean))
                mean.copy_(new_mean)
        if self.k.item() < 2:
            raise RuntimeError(f"MEND normalisation needs two tokens, has seen {int(self.k.item())}")
        self.u_std.copy_((self.u_s / (self.k - 1)) ** 0.5)
        self.v_std.copy_((self.v_s / (self.k - 1)) ** 0.5)

    def forward(self, u: torch.Tensor, v: torch.Tensor, mode: int | None,
                observe: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        u, v = u.float().reshape(-1, u.shape[-1]), v.float().reshape(-1, v.shape[-1])
        keep = (u != 0).any(-1) & (v != 0).any(-1)  # tokens without a gradient carry no edit
        u, v = u[keep], v[keep]
        if observe:
            self.observe(u, v)
        z = torch.cat([(u - self.u_mean) / (self.u_std + 1e-7),
                       (v - self.v_mean) / (self.v_std + 1e-7)], -1)
        u_tilde, v_tilde = self.mlp(z, mode).split([self.x_dim, self.delta_dim], -1)
        return u_tilde, v_tilde


def shape_key(shape: tuple[int, int]) -> str:
    return str(tuple(shape))  # EasyEdit's ModuleDict key, e.g. "(576, 1536)"


class MENDNetwork(nn.Module):
    """One shared network per weight shape, one step size α per edited weight."""

    def __init__(self, shapes: dict[str, tuple[int, int]], config: TrainConfig) -> None:
        super().__init__()
        self.names = list(shapes)
        self.shapes = dict(shapes)
        by_shape: dict[tuple[int, int], list[str]] = {}
        for name, shape in shapes.items():
            by_shape.setdefault(shape, []).append(name)
        self.modes = {name: names.index(name) for names in by_shape.values() for name in names}
        generator = torch.Generator().manual_seed(config.seed)
        self.mend = nn.ModuleDict({
            shape_key(shape): GradientNet(*shape, config.rank, config.n_hidden, len(names), generator)
            for shape, names in by_shape.items()})
        self.edit_lrs = nn.Parameter(torch.full((len(self.names),), config.edit_lr))
        self.train_seconds = float("nan")  # recorded by train(), kept in the cached file

    def factors_to_update(self, name: str, u: torch.Tensor, delta: torch.Tensor,
                          observe: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(left = α δ̃ᵀ [out, N], right = ũᵀ [in, N]): ΔW = left @ rightᵀ (math orientation)."""
        net = self.mend[shape_key(self.shapes[name])]
        u_tilde, delta_tilde = net(u, delta, self.modes[name], observe)
        return self.edit_lrs[self.names.index(name)] * delta_tilde.T, u_tilde.T


# --------------------------------------------------------------------------- the editor


class MEND(Editor):
    name = "mend"
    version = "2"  # EasyEdit's architecture (v1: output projection only, fixed sign, frozen norm)
    HParams = MENDHParams
    can_batch = True

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: MENDHParams,
             ) -> WeightDelta:
        lm = ctx.lm
        names = edited_weights(lm, hp)
        config = train_config(hp.config)
        network = trained_network(lm, names, hp.config, ctx.data_dir)
        factors = edit_factors(lm, names, requests, config.autocast_bf16)
        updates = {}
        with torch.no_grad():
            for name in names:
                left, right = network.factors_to_update(name, *factors[name])
                updates[name] = lowrank_update(lm.layout.transposed, left.contiguous(),
                                               right.contiguous())
        return WeightDelta(updates, {"editor": self.name, "config": hp.config})


Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # weight → (u [T, d_in], δ [T, d_out])
Targets = list[tuple[int, int, int]]  # (row, position, token)


def _target_rows(lm: LoadedModel, prompts: Sequence[str], targets: Sequence[str],
                 ) -> tuple[Batch, Targets]:
    """Rows ``prompt + target[:-1]`` and (row, position, token) for every target token."""
    rows, positions = [], []
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        context, answer = lm.encode(prompt, bos=True), lm.encode(target)
        rows.append(context + answer[:-1])
        positions.extend((row, len(context) - 1 + t, token) for t, token in enumerate(answer))
    return Batch.of(lm, rows), positions


def _token_nll(lm: LoadedModel, hidden: torch.Tensor, positions: Targets) -> torch.Tensor:
    """NLL of each target token, [len(positions)] (logits only where needed)."""
    index = torch.tensor(positions, device=hidden.device)
    log_probs = F.log_softmax(lm.head_logits(hidden[index[:, 0], index[:, 1]].float()), -1)
    return -log_probs.gather(-1, index[:, 2:3])[:, 0]


def _row_mean(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    sums = torch.zeros(n_rows, device=values.device).index_add(0, rows, values)
    return sums / torch.bincount(rows, minlength=n_rows).clamp_min(1)


@contextmanager
def _capture_factors(lm: LoadedModel, names: Sequence[str]) -> Iterator[dict[str, dict]]:
    """Record each edited weight's module input u and make its output a node whose .grad is δ."""
    records: dict[str, dict] = {name: {} for name in names}

    def hook(name: str) -> Callable:
        def capture(mod: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad:  # the lowest edited module: backward stops here
                output.requires_grad_()
            output.retain_grad()
            records[name]["u"], records[name]["out"] = args[0].detach(), output
        return capture

    handles = [lm.module(name.removesuffix(".weight")).register_forward_hook(hook(name))
               for name in names]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def edit_factors(lm: LoadedModel, names: Sequence[str], requests: Sequence[EditRequest],
                 autocast_bf16: bool) -> Factors:
    """Each weight's (u_t, δ_t) over every token of every request, from one forward/backward.

    The loss is the mean NLL over all target tokens of the call (EasyEdit's edit loss).
    """
    batch, positions = _target_rows(lm, [r.prompt for r in requests],
                                    [r.target_new for r in requests])
    with torch.enable_grad(), _capture_factors(lm, names) as records:
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            hidden = lm.decoder(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
        _token_nll(lm, hidden.float(), positions).mean().backward()
    return {name: (records[name]["u"].float().flatten(0, 1),
                   records[name]["out"].grad.float().flatten(0, 1)) for name in names}


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


def trained_network(lm: LoadedModel, names: Sequence[str], config_name: str, data_dir: Path,
                    log: Callable[[str], None] | None = None) -> MENDNetwork:
    """The trained MEND network for (model, edited weights, config, data): loaded, or trained once."""
    config = train_config(config_name)
    from editgate.cache import file_sha256

    data_hash = file_sha256(data_dir / "counterfact" / "counterfact-train.jsonl")
    path = cache_path("mend", compute_key(lm, trained_network, weights=list(names),
                                          config=dataclasses.asdict(config), data=data_hash),
                      ".safetensors")
    shapes = {name: weight_shape(lm, name) for name in names}

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
        return train(lm, names, config, data_dir, say).eval().requires_grad_(False)

    return get_or_compute(path, train_now, save, load)


def train(lm: LoadedModel, names: Sequence[str], config: TrainConfig, data_dir: Path,
          log: Callable[[str], None]) -> MENDNetwork:
    """Fit the gradient networks and step sizes as in the module docstring."""
    if config.edit_loss not in ("edit", "edit+paraphrase"):
        raise ConfigError(f"mend: edit_loss = {config.edit_loss!r}; choose 'edit' or "
                          "'edit+paraphrase'")
    requests, _ = training_requests(data_dir, config.examples, config.seed)
    network = MENDNetwork({name: weight_shape(lm, name) for name in names}, config).to(lm.device)
    network.train()
    optimizer = torch.optim.Adam([
        {"params": list(network.mend.parameters()), "lr": config.lr},
        {"params": [network.edit_lrs], "lr": config.lr_lr}])
    start = time.perf_counter()
    steps = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(requests), generator=torch.Generator().manual_seed(
            config.seed + epoch)).tolist()
        for first in range(0, len(order), config.batch_size):
            batch = [requests[i] for i in order[first:first + config.batch_size]]
            edit_loss, loc_loss = _training_losses(lm, network, names, batch, config)
            loss = config.c_edit * edit_loss + config.c_loc * loc_loss
            optimizer.zero_grad()
            loss.backward()
            grads = [p.grad for p in network.parameters() if p.grad is not None]
            if all(torch.isfinite(g).all() for g in grads):  # EasyEdit skips non-finite steps
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
                optimizer.step()
            steps += 1
            if steps % 10 == 0 or first + config.batch_size >= len(order):
                log(f"epoch {epoch + 1}/{config.epochs} step {steps}: edit NLL "
                    f"{edit_loss.item():.3f}, locality KL {loc_loss.item():.4f}, "
                    f"α {network.edit_lrs.detach().cpu().numpy().round(6).tolist()}, "
                    f"{time.perf_counter() - start:.0f} s")
    network.train_seconds = time.perf_counter() - start
    log(f"trained {steps} steps on {len(requests)} edits in {network.train_seconds:.1f} s")
    return network


def _training_losses(lm: LoadedModel, network: MENDNetwork, names: Sequence[str],
                     batch: Sequence[EditRequest], config: TrainConfig,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(edit NLL, locality KL) after each example's own MEND edit, averaged over the batch."""
    n = len(batch)
    # The unedited pass: edit rows carry each example's own loss (rows are independent, so
    # row e's factors are those of example e alone); locality rows ride along for P_W.
    edit_rows, edit_targets = _target_rows(lm, [r.prompt for r in batch],
                                           [r.target_new for r in batch])
    loc_ids = [lm.encode(r.neighborhood_prompts[0], bos=True) for r in batch]
    loc_answers = [lm.encode(r.neighborhood_answer or r.target_true) for r in batch]
    loc_rows = Batch.of(lm, [p + a for p, a in zip(loc_ids, loc_answers)])
    # KL over the answer's positions: the last |a_loc| positions of each locality row.
    loc_positions = [(row, len(p) + t) for row, (p, a) in enumerate(zip(loc_ids, loc_answers))
                     for t in range(len(a))]
    both = _stack(lm, [edit_rows, loc_rows])
    index = torch.tensor([row for row, _, _ in edit_targets], device=lm.device)
    with torch.enable_grad(), _capture_factors(lm, names) as records:
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=config.autocast_bf16):
            hidden = lm.decoder(input_ids=both.ids, attention_mask=both.mask).last_hidden_state
        _row_mean(_token_nll(lm, hidden.float(), edit_targets), index, n).sum().backward()
    loc_index = torch.tensor(loc_positions, device=lm.device)
    base_hidden = hidden[n:].detach()[loc_index[:, 0], loc_index[:, 1]].float()
    base_log_probs = F.log_softmax(lm.head_logits(base_hidden), -1)

    # Each example's ΔW factors, examples in order (the running statistics see them in turn).
    width = edit_rows.ids.shape[1]
    per_example: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in names}
    for e in range(n):
        for name in names:
            u = records[name]["u"][e, :width].float()
            delta = records[name]["out"].grad[e, :width].float()
            left, right = network.factors_to_update(name, u, delta, observe=True)
            per_example[name].append((right.T, left.T))  # ũ [T, in], α δ̃ [T, out]
    stacks = {name: (nn.utils.rnn.pad_sequence([u for u, _ in pairs], batch_first=True),
                     nn.utils.rnn.pad_sequence([d for _, d in pairs], batch_first=True))
              for name, pairs in per_example.items()}

    # Edited pass: rows [edit | paraphrase | locality]; row r uses example (r % n)'s ΔW.
    prompts = [r.prompt for r in batch]
    if config.edit_loss == "edit+paraphrase":
        prompts += [r.paraphrase_prompts[0] for r in batch]
    target_rows, targets = _target_rows(lm, prompts, [r.target_new for r in batch] * (
        len(prompts) // n))
    rows = _stack(lm, [target_rows, loc_rows])
    example = torch.arange(rows.ids.shape[0], device=lm.device) % n

    def add_update(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            u_stack, d_stack = stacks[name]
            change = (args[0].float() @ u_stack[example].transpose(1, 2)) @ d_stack[example]
            return output + change.to(output.dtype)
        return hook

    handles = [lm.module(name.removesuffix(".weight")).register_forward_hook(add_update(name))
               for name in names]
    try:
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=config.autocast_bf16):
            hidden = lm.decoder(input_ids=rows.ids, attention_mask=rows.mask).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    hidden = hidden.float()
    n_target_rows = len(prompts)
    target_index = torch.tensor([row for row, _, _ in targets], device=lm.device)
    edit_loss = _row_mean(_token_nll(lm, hidden[:n_target_rows], targets), target_index,
                          n_target_rows).mean()
    edited_hidden = hidden[n_target_rows:][loc_index[:, 0], loc_index[:, 1]]
    edited_log_probs = F.log_softmax(lm.head_logits(edited_hidden), -1)
    kl = (base_log_probs.exp() * (base_log_probs - edited_log_probs)).sum(-1)  # per position
    return edit_loss, _row_mean(kl, loc_index[:, 0], n).mean()


def _stack(lm: LoadedModel, batches: Sequence[Batch]) -> Batch:
    """Right-pad several batches to one width and stack their rows."""
    width = max(b.ids.shape[1] for b in batches)
    pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)
    return Batch(torch.cat([pad(b.ids, lm.tokenizer.pad_token_id) for b in batches]),
                 torch.cat([pad(b.mask, 0) for b in batches]))


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
    train_cmd.add_argument("--params", default=None, help="mlp (default) or out")
    args = parser.parse_args(argv)

    from editgate.data import resolve_data_dir
    from editgate.models import load_model

    lm = load_model(args.model)
    layers = tuple(int(x) for x in args.layers.split(",") if x.strip())
    changes = {"config": args.config, **({"layers": layers} if layers else {}),
               **({"params": args.params} if args.params else {})}
    hp = dataclasses.replace(MEND().hparams(lm), **changes)
    start = time.perf_counter()
    trained_network(lm, edited_weights(lm, hp), hp.config, resolve_data_dir(args.data_dir),
                    log=lambda text: print(text, flush=True))
    print(f"mend config {args.config!r} for {args.model}: ready in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
