"""FT-L, FT-M, KN and MEND agree with their published implementation (EasyEdit) numerically.

The fixtures under ``reference_data/{ft_l,ft_m,kn,mend}/`` were produced by running EasyEdit's
own code on CPU on the same inputs: the tiny random GPT-2 and Llama of
:func:`editgate.testing.tiny_model` (saved with ``save_pretrained``, so both sides load identical
weights — each fixture records the weights' digest) and SmolLM2-135M on the first three
CounterFact-edit requests. ``reference_data/README_ft_kn_mend.md`` names the commit, the commands
and the (harness-only) patches. Each test configures editgate's editor with the reference's
hyper-parameters and the named options off (the defaults), and compares:

* FT-L / FT-M: ΔW (weight, and bias on GPT-2) — cosine and relative Frobenius error;
* KN: the attribution scores of every neuron, the chosen neurons (exactly the same set) and ΔW;
* MEND: the gradient network's output on fixed factors with fixed weights and statistics, the
  running statistics in training mode, and the whole edit (factors from the model's own
  forward/backward → network → ΔW) with fixed network weights.

The issue's bar is cosine ≥ 0.999 and relative error ≤ 1e-2 in float32; these editors reach far
tighter, so tighter bounds are asserted (``TIGHT``; SmolLM2's 25 Adam steps of FT-L amplify
kernel-order rounding, hence ``LOOSE`` there).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from reference import agreement
from safetensors import safe_open

from editgate.delta import lowrank_update
from editgate.editors.base import EditContext
from editgate.editors.kn import answer_attributions
from editgate.editors.mend import GradientNet, MENDNetwork, TrainConfig, edit_factors, weight_shape
from editgate.edits import EditRequest
from editgate.models import weights_digest
from editgate.registry import EDITORS
from editgate.testing import tiny_model

REFERENCE = Path(__file__).parent / "reference_data"
TIGHT = (1 - 1e-8, 1e-4)  # (min cosine, max relative Frobenius error)
LOOSE = (1 - 1e-6, 1e-3)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as handle:
        meta = {k: json.loads(v) if v[:1] in "[{" or v in ("true", "false") else v
                for k, v in (handle.metadata() or {}).items()}
        names = list(handle.keys())  # a safe_open handle is not iterable
        return {k: handle.get_tensor(k) for k in names}, meta


def assert_agrees(mine: torch.Tensor, reference: torch.Tensor, bounds: tuple[float, float],
                  what: str) -> None:
    assert mine.shape == reference.shape, (what, mine.shape, reference.shape)
    cosine, error = agreement(mine, reference)
    assert cosine >= bounds[0] and error <= bounds[1], f"{what}: cos {cosine:.9f}, rel {error:.2e}"


def fixtures(editor: str, prefix: str) -> list:
    paths = sorted((REFERENCE / editor).glob(f"{prefix}*.safetensors"))
    assert paths, f"no {editor} fixtures {prefix}* in {REFERENCE}"
    marks = [pytest.mark.real_model] if prefix == "smollm2" else []
    return [pytest.param(p, id=p.stem, marks=marks) for p in paths]


@pytest.fixture(scope="module")
def models():
    """Tiny models built once per module; SmolLM2 loaded on first use."""
    loaded: dict = {}

    def get(name: str):
        if name not in loaded:
            if name == "smollm2":
                from editgate.models import load_model

                loaded[name] = load_model("smollm2-135m")
            else:
                loaded[name] = tiny_model(name.removeprefix("tiny-"))
        return loaded[name]
    return get


def model_for(models, meta: dict):
    lm = models(meta["model"])
    assert weights_digest(lm.model) == meta["digest"], (
        f"{meta['model']}: the weights differ from those the reference ran on (a change in "
        "torch's random initialisation or in editgate.testing?): regenerate the fixtures")
    return lm


def request(r: dict, index: int = 0) -> EditRequest:
    return EditRequest(f"ref-{index}", r["prompt"], r["subject"], r["target_new"], r["ground_truth"])


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ FT-L and FT-M


def check_fine_tuning(models, path: Path) -> None:
    reference, meta = read(path)
    lm = model_for(models, meta)
    name = "ft-l" if meta["objective"] == "prompt_last" else "ft-m"
    editor = EDITORS.get(name)()
    ref = meta["hparams"]
    hp = dataclasses.replace(
        editor.hparams(lm), layer=ref["layers"][0], steps=ref["num_steps"], lr=ref["lr"],
        norm_constraint=float("inf") if ref["norm_constraint"] is False else ref["norm_constraint"],
        batch_size=ref["batch_size"], stop_loss=1e-2, include_bias=lm.layout.transposed,
        autocast_bf16=False)
    requests = [request(r, i) for i, r in enumerate(meta["requests"])]
    delta = editor.edit(EditContext(lm, Path(".")), requests, hp)
    assert sorted(delta.updates) == sorted(reference)
    bounds = LOOSE if meta["model"] == "smollm2" else TIGHT
    for param, expected in reference.items():
        mine = delta.dense(param)
        if meta["rows"] != "all":  # SmolLM2: every 16th row of ΔW is stored
            start, step = meta["rows"]
            mine = mine[start::step]
        assert_agrees(mine, expected, bounds, f"{path.stem}: {param}")


@pytest.mark.parametrize("path", fixtures("ft_l", "tiny"))
def test_ft_l_matches_reference(models, path):
    check_fine_tuning(models, path)


@pytest.mark.parametrize("path", fixtures("ft_m", "tiny"))
def test_ft_m_matches_reference(models, path):
    check_fine_tuning(models, path)


@pytest.mark.parametrize("path", fixtures("ft_l", "smollm2"))
def test_ft_l_matches_reference_on_smollm2(models, path):
    check_fine_tuning(models, path)


# ------------------------------------------------------------------ KN


def check_kn(models, path: Path) -> None:
    reference, meta = read(path)
    lm = model_for(models, meta)
    editor = EDITORS.get("kn")()
    hp = dataclasses.replace(
        editor.hparams(lm), layers=(), ig_steps=int(meta["steps"]),
        threshold=float(meta["adaptive_threshold"]),
        # EasyEdit's GPT-2 branch never re-tokenises; its LLaMA-type branch extends greedily.
        multi_token="last_prompt" if lm.layout.transposed else "greedy",
        prompts=1, first_token_only=False, edit_rule="easyedit", site="pre_activation",
        autocast_bf16=False)
    req = request(meta["request"])
    layers = list(range(lm.num_layers))
    attributions, _ = answer_attributions(lm, req.prompt, lm.encode(req.target_true), layers, hp)
    assert_agrees(attributions, reference["attributions"], TIGHT, f"{path.stem}: attributions")

    delta = editor.edit(EditContext(lm, Path(".")), [req], hp)
    dense = {layer: delta.dense(lm.layout.weight_name(layer)) for layer in layers
             if lm.layout.weight_name(layer) in delta.updates}
    dense = {layer: d.T if lm.layout.transposed else d for layer, d in dense.items()}  # [out, in]
    chosen = sorted((layer, int(i)) for layer, d in dense.items()
                    for i in torch.nonzero(d.abs().sum(0)).flatten())
    assert chosen == sorted(map(tuple, reference["neurons"].tolist())), f"{path.stem}: neurons"
    for layer, d in dense.items():
        expected = reference[f"delta.{layer}"]
        if expected.shape != d.shape:  # SmolLM2: only the edited columns are stored
            d = d[:, [i for l_, i in chosen if l_ == layer]]
        assert_agrees(d, expected, TIGHT, f"{path.stem}: ΔW of layer {layer}")


@pytest.mark.parametrize("path", fixtures("kn", "tiny"))
def test_kn_matches_reference(models, path):
    check_kn(models, path)


@pytest.mark.parametrize("path", fixtures("kn", "smollm2"))
def test_kn_matches_reference_on_smollm2(models, path):
    check_kn(models, path)


# ------------------------------------------------------------------ MEND


def test_mend_network_matches_reference():
    """EasyEdit's GradientTransform with fixed weights and statistics on fixed factors (a token
    without gradient included): the same transformed factors, for every mode."""
    reference, meta = read(REFERENCE / "mend" / "net.safetensors")
    net = GradientNet(meta_int(meta, "x_dim"), meta_int(meta, "delta_dim"), meta_int(meta, "rank"),
                      meta_int(meta, "n_hidden"), meta_int(meta, "n_modes"),
                      torch.Generator().manual_seed(0))
    net.load_state_dict({k.removeprefix("net."): v for k, v in reference.items()
                         if k.startswith("net.")})
    with torch.no_grad():
        for mode in (None, 0, 2):
            u_tilde, v_tilde = net(reference["u"], reference["v"], mode)
            assert_agrees(u_tilde, reference[f"out.mode{mode}.u"], TIGHT, f"ũ, mode {mode}")
            assert_agrees(v_tilde, reference[f"out.mode{mode}.v"], TIGHT, f"δ̃, mode {mode}")


def meta_int(meta: dict, key: str) -> int:
    return int(meta[key])


def test_mend_running_statistics_match_reference():
    """Training mode: Welford's running mean/std over a sequence of factor batches, updated
    before each batch is normalised."""
    reference, _ = read(REFERENCE / "mend" / "stats.safetensors")
    net = GradientNet(32, 64, 8, 1, 2, torch.Generator().manual_seed(0))
    net.load_state_dict({k.removeprefix("net."): v for k, v in reference.items()
                         if k.startswith("net.")}, strict=False)
    with torch.no_grad():
        for step in range(3):
            u_tilde, v_tilde = net(reference[f"u{step}"], reference[f"v{step}"], step % 2,
                                   observe=True)
            assert_agrees(u_tilde, reference[f"out{step}.u"], TIGHT, f"ũ after batch {step}")
            assert_agrees(v_tilde, reference[f"out{step}.v"], TIGHT, f"δ̃ after batch {step}")
    for key in ("u_mean", "v_mean", "u_std", "v_std", "k"):
        assert_agrees(getattr(net, key), reference[key], TIGHT, key)


def mend_deltas(lm, reference: dict, meta: dict, req: EditRequest) -> dict[str, torch.Tensor]:
    names = meta["inner_params"]
    network = MENDNetwork({n: weight_shape(lm, n) for n in names},
                          TrainConfig(rank=int(meta["rank"])))
    state = {"mend." + k.removeprefix("net."): v for k, v in reference.items()
             if k.startswith("net.")}
    network.load_state_dict({**state, "edit_lrs": reference["edit_lrs"]})
    network.eval()
    factors = edit_factors(lm, names, [req], autocast_bf16=False)
    out = {}
    with torch.no_grad():
        for name in names:
            left, right = network.factors_to_update(name, *factors[name])
            out[name] = lowrank_update(lm.layout.transposed, left, right).dense()
    return out


@pytest.mark.parametrize("path", fixtures("mend", "tiny"))
def test_mend_edit_matches_reference(models, path):
    """The whole edit with fixed network weights (signs of α mixed): loss, factor capture
    (inputs and output gradients of every MLP projection, tokens without gradient dropped),
    shared per-shape networks with modes, ΔW = α Σ δ̃ ũᵀ added."""
    reference, meta = read(path)
    lm = model_for(models, meta)
    deltas = mend_deltas(lm, reference, meta, request(meta["request"]))
    for name, mine in deltas.items():
        assert_agrees(mine, reference[f"delta.{name}"], TIGHT, f"{path.stem}: {name}")
