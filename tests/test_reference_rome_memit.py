"""ROME, R-ROME, MEMIT and AlphaEdit agree with their reference implementations, numerically.

The fixtures under ``tests/reference_data/`` hold what the reference code produced — kmeng01/rome,
EasyEdit's R-ROME, kmeng01/memit and jianghoucheng/AlphaEdit, run on CPU in float32 — for fixed
inputs: the weights of tiny random GPT-2 and Llama models, fixed context templates, a fixed
covariance matrix C and fixed requests (``reference_data/cases.json``); and SmolLM2 on three
CounterFact requests. ``reference_data/README.md`` names the commits, the command and the patches.

Each test configures editgate's editor with the reference's hyper-parameters (names mapped as in
the editors' docstrings), feeds it the same templates and C, and compares keys k*, values v* / z
and every ΔW: cosine and relative Frobenius error. The value optimisation is 20-25 Adam steps
through the whole network whose result is clamped to a norm ball, so float32 rounding differences
of the two forward implementations reach the result; the bounds below leave room for that and no
more.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from reference import agreement
from safetensors.torch import load_file

import editgate.editors.alphaedit as alphaedit_module
import editgate.editors.memit as memit_module
import editgate.editors.rome as rome_module
from editgate.editors.alphaedit import STATE_KEY
from editgate.editors.base import EditContext
from editgate.edits import EditRequest
from editgate.models import LoadedModel, from_pretrained_objects
from editgate.registry import EDITORS
from editgate.testing import tiny_model

DATA = Path(__file__).parent / "reference_data"
CASES: dict[str, dict] = {c["name"]: c for c in json.loads((DATA / "cases.json").read_text())["cases"]}
TINY = ("tiny-gpt2", "tiny-llama")

# The bounds the issue asks for (float32): cosine ≥ 0.999, relative Frobenius error ≤ 1e-2.
COSINE, RELATIVE = 0.999, 1e-2


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_agrees(ours: torch.Tensor, ref: torch.Tensor, what: str, *, cosine: float = COSINE,
                  relative: float = RELATIVE) -> None:
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    cos, rel = agreement(ours, ref)
    assert cos >= cosine and rel <= relative, f"{what}: cosine {cos:.6f}, rel. Frobenius {rel:.2e}"


def requests_of(case: dict) -> list[EditRequest]:
    return [EditRequest(r["case_id"], r["prompt"].format(r["subject"]), r["subject"],
                        " " + r["target_new"], " " + r["target_true"]) for r in case["requests"]]


def editgate_hparams(case: dict) -> dict[str, Any]:
    """The reference's hyper-parameters under editgate's names (see the editors' docstrings)."""
    ref = case["hparams"]
    values: dict[str, Any] = dict(steps=ref["v_num_grad_steps"], lr=ref["v_lr"],
                                  kl_factor=ref["kl_factor"], weight_decay=ref["v_weight_decay"],
                                  clamp_norm_factor=ref["clamp_norm_factor"],
                                  early_stop_loss=0.05, autocast_bf16=False)
    if case["editor"] in ("rome", "r-rome"):
        values.update(layer=ref["layers"][0], mom2=ref["mom2_adjustment"])
    else:
        values.update(layers=tuple(ref["layers"]), through_post_norm=False)
    if case["editor"] == "memit":
        values.update(mom2_weight=float(ref["mom2_update_weight"]))
    if case["editor"] == "alphaedit":
        values.update(nullspace_threshold=ref["nullspace_threshold"], nullspace_relative=False,
                      l2=float(ref["L2"]))
    return values


def tiny_inputs(name: str) -> tuple[LoadedModel, dict[int, torch.Tensor]]:
    """The tiny model with the exact weights the reference ran on, and the fixed C per layer."""
    stored = load_file(str(DATA / "inputs" / f"{name}.safetensors"))
    arch = name.removeprefix("tiny-")
    model = tiny_model(arch, seed=0).model
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            param.copy_(stored[f"weight.{param_name}"])
    lm = from_pretrained_objects(name, model, tiny_model(arch).tokenizer, prepend_bos=False)
    covs = {int(k.split(".")[1]): v.double() for k, v in stored.items() if k.startswith("cov.")}
    return lm, covs


@pytest.fixture()
def fixed_inputs(monkeypatch):
    """Feed an editor the case's templates and C instead of sampling / corpus statistics."""

    def use(case: dict, covs: dict[int, torch.Tensor]) -> None:
        groups = [list(g) for g in case["groups"]]
        templates = lambda lm, length_params, seed: groups
        moments = lambda lm, layers, data_dir, **kw: {layer: covs[layer] for layer in layers}
        for module in (rome_module, memit_module):
            monkeypatch.setattr(module, "context_template_groups", templates)
        for module in (rome_module, memit_module, alphaedit_module):
            monkeypatch.setattr(module, "second_moments", moments)

    return use


def spy(monkeypatch, module: Any, name: str) -> list:
    """Record every return value of ``module.name`` (the editor's own intermediate results)."""
    calls: list = []
    original: Callable = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(module, name, wrapper)
    return calls


def dense_math(lm: LoadedModel, delta, layer: int) -> torch.Tensor:
    """A layer's ΔW as [out, in] (GPT-2's Conv1D stores [in, out])."""
    dense = delta.dense(lm.layout.weight_name(layer)).double()
    return dense.T if lm.layout.transposed else dense


def factors(ref: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    left, right = ref[f"{prefix}.left"].double(), ref[f"{prefix}.right"].double()
    return (left.reshape(len(left), -1) @ right.reshape(len(right), -1).T)


# ------------------------------------------------------------------------- ROME, R-ROME


def check_rome(lm: LoadedModel, case: dict, monkeypatch, data_dir: Path, *, cosine: float,
               relative: float) -> None:
    ref = load_file(str(DATA / case["editor"] / f"{case['model']}.safetensors"))
    editor = EDITORS.get(case["editor"])()
    hp = editor.hparams(lm, editgate_hparams(case))
    keys = spy(monkeypatch, rome_module, "mlp_keys")
    values = spy(monkeypatch, rome_module, "compute_value")
    for j, request in enumerate(requests_of(case)):
        keys.clear()
        values.clear()
        delta = editor.edit(EditContext(lm, data_dir), [request], hp)
        assert_agrees(keys[0].mean(0), ref[f"k_star.{j}"], f"k* {j}", cosine=0.99999, relative=1e-4)
        assert_agrees(values[0], ref[f"v_star.{j}"], f"v* {j}", cosine=cosine, relative=relative)
        assert_agrees(dense_math(lm, delta, hp.layer), factors(ref, f"delta.{hp.layer}.{j}"),
                      f"ΔW {j}", cosine=cosine, relative=relative)


@pytest.mark.parametrize("editor", ["rome", "r-rome"])
@pytest.mark.parametrize("model", TINY)
def test_rome_family_matches_reference(editor, model, fixed_inputs, monkeypatch, data_dir):
    case = CASES[f"{editor}-{model}"]
    lm, covs = tiny_inputs(model)
    fixed_inputs(case, covs)
    check_rome(lm, case, monkeypatch, data_dir, cosine=0.9999, relative=1e-3)


# ------------------------------------------------------------------------- MEMIT


def check_memit(lm: LoadedModel, case: dict, monkeypatch, data_dir: Path, *, cosine: float,
                relative: float) -> None:
    ref = load_file(str(DATA / "memit" / f"{case['model']}.safetensors"))
    editor = EDITORS.get("memit")()
    hp = editor.hparams(lm, editgate_hparams(case))
    targets = spy(monkeypatch, memit_module, "request_targets")
    keys = spy(monkeypatch, memit_module, "request_keys")
    delta = editor.edit(EditContext(lm, data_dir), requests_of(case), hp)
    assert_agrees(targets[0], ref["z"], "z", cosine=cosine, relative=relative)
    for layer, layer_keys in zip(hp.layers, keys):
        # The first layer's keys precede every update; later ones follow the updates below.
        assert_agrees(layer_keys, ref[f"keys.{layer}"], f"keys {layer}", cosine=cosine,
                      relative=relative)
        assert_agrees(dense_math(lm, delta, layer), factors(ref, f"delta.{layer}"), f"ΔW {layer}",
                      cosine=cosine, relative=relative)
    assert_agrees(keys[0], ref[f"keys.{hp.layers[0]}"], "first keys", cosine=0.99999,
                  relative=1e-4)


@pytest.mark.parametrize("model", TINY)
def test_memit_matches_reference(model, fixed_inputs, monkeypatch, data_dir):
    case = CASES[f"memit-{model}"]
    lm, covs = tiny_inputs(model)
    fixed_inputs(case, covs)
    check_memit(lm, case, monkeypatch, data_dir, cosine=0.9999, relative=1e-3)


# ------------------------------------------------------------------------- MEMIT + RECT


@pytest.mark.parametrize("model", TINY)
def test_memit_rect_matches_reference(model, fixed_inputs, data_dir):
    """RECT on MEMIT's update as the AlphaEdit repository's memit_rect_main.py applies it.

    It keeps the entries with |ΔW / (W + 10⁻⁸)| ≥ the k-th smallest, k = ⌊60 % · |W|⌋ (one or
    two entries more than editgate's exactly 40 %, the smallest kept ratios): hence the bounds.
    """
    case = CASES[f"memit+rect-{model}"]
    lm, covs = tiny_inputs(model)
    fixed_inputs(case, covs)
    ref = load_file(str(DATA / "memit+rect" / f"{model}.safetensors"))
    editor = EDITORS.get("memit+rect")()
    hp = editor.hparams(lm, {**editgate_hparams({**case, "editor": "memit"}),
                             "keep_fraction": case["keep_fraction"]})
    delta = editor.edit(EditContext(lm, data_dir), requests_of(case), hp)
    for layer in hp.layers:
        ours, theirs = dense_math(lm, delta, layer), ref[f"delta.{layer}"].double()
        assert abs(int((ours != 0).sum()) - int((theirs != 0).sum())) <= 2
        assert_agrees(ours, theirs, f"ΔW {layer}", cosine=0.9999, relative=1e-3)


# ------------------------------------------------------------------------- AlphaEdit


def check_alphaedit(lm: LoadedModel, case: dict, monkeypatch, data_dir: Path, *, cosine: float,
                    relative: float) -> None:
    ref = load_file(str(DATA / "alphaedit" / f"{case['model']}.safetensors"))
    editor = EDITORS.get("alphaedit")()
    hp = editor.hparams(lm, editgate_hparams(case))
    requests = requests_of(case)
    for layer in hp.layers:
        projection = alphaedit_module.null_space_projection(
            alphaedit_module.second_moments(lm, [layer], data_dir)[layer], hp.nullspace_threshold)
        assert round(float(projection.trace())) == round(float(ref[f"null_dim.{layer}"]))
        if f"projection.{layer}" in ref:
            assert_agrees(projection, ref[f"projection.{layer}"], f"P {layer}", cosine=0.99999,
                          relative=1e-4)
    state: dict = {}
    applied = []
    try:
        for c, call in enumerate(case["calls"]):
            targets = spy(monkeypatch, memit_module, "request_targets")
            delta = editor.edit(EditContext(lm, data_dir, state=state), [requests[k] for k in call],
                                hp)
            assert_agrees(targets[0], ref[f"call{c}.z"], f"call {c} z", cosine=cosine,
                          relative=relative)
            for layer in hp.layers:
                ours = dense_math(lm, delta, layer)
                theirs = (ref[f"call{c}.delta.{layer}"].double() if f"call{c}.delta.{layer}" in ref
                          else factors(ref, f"call{c}.delta.{layer}"))
                assert_agrees(ours, theirs, f"call {c} ΔW {layer}", cosine=cosine, relative=relative)
                if f"call{c}.cache_c.{layer}" in ref:  # the carried keys: Σ K_pᵀ K_p
                    past = state[STATE_KEY.format(layer=layer)].double()
                    assert_agrees(past.T @ past, ref[f"call{c}.cache_c.{layer}"], f"call {c} K_p",
                                  cosine=cosine, relative=relative)
            applied.append(delta.apply(lm.model))  # the next call edits the edited model
    finally:
        for handle in reversed(applied):
            handle.revert()


@pytest.mark.parametrize("model", TINY)
def test_alphaedit_matches_reference(model, fixed_inputs, monkeypatch, data_dir):
    case = CASES[f"alphaedit-{model}"]
    lm, covs = tiny_inputs(model)
    fixed_inputs(case, covs)
    check_alphaedit(lm, case, monkeypatch, data_dir, cosine=0.9999, relative=1e-3)


# ------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2_covs(smollm2, data_dir) -> dict[int, torch.Tensor]:
    """C of SmolLM2's layers 4-8 from the corpus's first 4096 tokens, in float32 as the fixtures'
    (checked against the trace and norm recorded when the fixtures were made)."""
    from editgate.stats import second_moments

    case = CASES["memit-smollm2"]
    moments = second_moments(smollm2, case["hparams"]["layers"], data_dir,
                             n_tokens=case["cov_tokens"], autocast_bf16=False)
    for layer, moment in moments.items():
        check = case["cov_check"][str(layer)]
        assert abs(float(moment.trace()) - check["trace"]) <= 1e-4 * check["trace"]
        assert abs(float(moment.norm()) - check["fro"]) <= 1e-4 * check["fro"]
    return {layer: m.float().double() for layer, m in moments.items()}


@pytest.mark.real_model
@pytest.mark.parametrize("editor", ["rome", "r-rome", "memit", "alphaedit"])
def test_smollm2_matches_reference(editor, smollm2, smollm2_covs, fixed_inputs, monkeypatch,
                                   data_dir):
    case = CASES[f"{editor}-smollm2"]
    fixed_inputs(case, smollm2_covs)
    check = {"rome": check_rome, "r-rome": check_rome, "memit": check_memit,
             "alphaedit": check_alphaedit}[editor]
    check(smollm2, case, monkeypatch, data_dir, cosine=COSINE, relative=RELATIVE)
