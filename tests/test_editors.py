"""Every editor's math and mechanics on tiny random models (GPT-2 Conv1D, Llama, Gemma 3).

Properties (hypothesis): ROME/R-ROME updates are rank one; MEMIT's rank is at most the batch size
per layer; AlphaEdit leaves the preserved keys' outputs unchanged; RECT keeps exactly the
requested fraction. Mechanics, for every registered editor: the model is not changed by edit(),
the delta reverts bit-exactly, and two calls with the same inputs give the same delta (no state
leaks between calls). Whether edits *take* needs the real model: tests/test_real_models.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editgate.delta import LowRank, WeightDelta
from editgate.editors.alphaedit import STATE_KEY, null_space_projection, null_space_update
from editgate.editors.base import EditContext
from editgate.editors.memit import invert_post_norm, least_squares_update, norm_gain
from editgate.editors.rect import rect
from editgate.edits import EditRequest
from editgate.models import weights_digest
from editgate.registry import EDITORS
from editgate.stats import second_moments
from editgate.testing import tiny_model

REQUESTS = [
    EditRequest("t-1", "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", " English",
                " French", ("Danielle Darrieux speaks",), ("Michel Rocard speaks",), " French"),
    EditRequest("t-2", "The capital of France is", "France", " Rome", " Paris",
                ("France has its capital in",), ("The capital of Italy is",), " Rome"),
    EditRequest("t-3", "Edwin of Northumbria is affiliated with the religion of",
                "Edwin of Northumbria", " Islam", " Christianity"),
]

# Cheap settings for tiny models: few optimisation steps, two prefixes, a 2k-token covariance.
_VALUE = dict(steps=4, context_template_length_params=((3, 2),), mom2_tokens=2048)
TINY_HPARAMS: dict[str, dict] = {
    "rome": dict(layer=1, **_VALUE),
    "r-rome": dict(layer=1, **_VALUE),
    "rome+rect": dict(layer=1, keep_fraction=0.3, **_VALUE),
    "memit": dict(layers=(1, 2), mom2_weight=10.0, **_VALUE),
    "memit+rect": dict(layers=(1, 2), mom2_weight=10.0, keep_fraction=0.3, **_VALUE),
    "alphaedit": dict(layers=(1, 2), nullspace_threshold=0.2, nullspace_relative=True, **_VALUE),
    "ft-l": dict(layer=1, steps=4),
    "ft-m": dict(layer=1, steps=4),
    "kn": dict(layers=(1, 2, 3), ig_steps=4),
    "mend": dict(layers=(2, 3), config="tiny"),
}
BUILTIN = sorted(TINY_HPARAMS)


pytestmark = pytest.mark.usefixtures("one_thread")


def edit(lm, data_dir, name: str, requests, state: dict | None = None, **overrides) -> WeightDelta:
    editor = EDITORS.get(name)()
    hp = editor.hparams(lm, {**TINY_HPARAMS[name], **overrides})
    return editor.edit(EditContext(lm, data_dir, state=state if state is not None else {}),
                       requests, hp)


def test_every_builtin_editor_is_registered():
    assert set(BUILTIN) <= set(EDITORS.names())


# ------------------------------------------------------------------ mechanics, every editor


@pytest.mark.parametrize("name", BUILTIN)
def test_edit_is_pure_deterministic_and_reverts_bit_exactly(tiny, data_dir, name):
    requests = REQUESTS[:2] if EDITORS.get(name).can_batch else REQUESTS[:1]
    before = weights_digest(tiny.model)
    delta = edit(tiny, data_dir, name, requests)
    assert weights_digest(tiny.model) == before  # edit() computes, never mutates
    assert delta and delta.is_finite() and delta.norm() > 0
    again = edit(tiny, data_dir, name, requests)  # fresh context, same inputs → same delta
    assert sorted(delta.updates) == sorted(again.updates)
    for param in delta.updates:
        assert torch.equal(delta.dense(param), again.dense(param)), param
    handle = delta.apply(tiny.model)
    assert weights_digest(tiny.model) != before
    handle.revert()
    assert weights_digest(tiny.model) == before


@pytest.mark.parametrize("name", ["rome", "r-rome"])
def test_rome_family_updates_are_rank_one(tiny, data_dir, name):
    delta = edit(tiny, data_dir, name, REQUESTS[:1])
    (param,) = delta.updates
    assert isinstance(delta.updates[param], LowRank) and delta.rank(param) == 1


def test_r_rome_differs_from_rome_only_in_the_key(data_dir):
    lm = tiny_model("llama")
    rome, r_rome = (edit(lm, data_dir, n, REQUESTS[:1]) for n in ("rome", "r-rome"))
    (param,) = rome.updates
    # Same u = C⁻¹k* (right factor), different scale of the left factor (v* − W k over uᵀk).
    torch.testing.assert_close(rome.updates[param].right, r_rome.updates[param].right)
    assert not torch.equal(rome.updates[param].left, r_rome.updates[param].left)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_memit_rank_at_most_batch_size_per_layer(data_dir, batch):
    lm = tiny_model("llama")
    delta = edit(lm, data_dir, "memit", REQUESTS[:batch])
    assert len(delta.updates) == 2  # one update per edited layer
    for param in delta.updates:
        assert 1 <= delta.rank(param) <= batch


def test_alphaedit_keeps_preserved_keys_and_accumulates_state(data_dir):
    lm = tiny_model("llama")
    state: dict = {}
    delta = edit(lm, data_dir, "alphaedit", REQUESTS[:2], state=state)
    hp = EDITORS.get("alphaedit")().hparams(lm, TINY_HPARAMS["alphaedit"])
    moments = second_moments(lm, hp.layers, data_dir, n_tokens=hp.mom2_tokens)
    for layer in hp.layers:
        assert state[STATE_KEY.format(layer=layer)].shape[0] == 2  # K_p: this call's keys
        projection = null_space_projection(moments[layer], hp.nullspace_threshold,
                                           relative=hp.nullspace_relative).double()
        preserved = torch.eye(len(projection), dtype=torch.float64) - projection
        dense = delta.dense(lm.layout.weight_name(layer)).double()
        dense = dense.T if lm.layout.transposed else dense
        generator = torch.Generator().manual_seed(layer)
        keys = preserved @ torch.randn(len(projection), 16, generator=generator, dtype=torch.float64)
        assert (dense @ keys).abs().max() <= 1e-5 * dense.abs().max() * keys.abs().max() * len(keys)
    # The second call sees the first call's keys and appends its own.
    edit(lm, data_dir, "alphaedit", REQUESTS[2:3], state=state)
    assert state[STATE_KEY.format(layer=hp.layers[0])].shape[0] == 3


# ------------------------------------------------------------------ the solvers, exactly


def _spd(generator, d: int, rank: int | None = None) -> torch.Tensor:
    a = torch.randn(d, rank or 3 * d, generator=generator, dtype=torch.float64)
    return a @ a.T / a.shape[1]


@settings(max_examples=40, deadline=None)
@given(d_in=st.integers(4, 24), d_out=st.integers(2, 12), n=st.integers(1, 6),
       weight=st.floats(1e-3, 1e4), seed=st.integers(0, 10_000))
def test_memit_least_squares_is_rank_bounded_and_optimal(d_in, d_out, n, weight, seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    residual = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    moment = _spd(g, d_in) + 0.1 * torch.eye(d_in, dtype=torch.float64)
    left, right = least_squares_update(keys, residual, moment, weight)
    delta = left.double() @ right.double().T
    assert torch.linalg.matrix_rank(delta) <= n
    # Normal equations of min Σ‖Δk_i − r_i‖² + λ tr(Δ C Δᵀ): Δ (KᵀK + λC) = Rᵀ K.
    lhs = delta @ (keys.T @ keys + weight * moment)
    torch.testing.assert_close(lhs, residual.T @ keys, rtol=1e-3, atol=1e-4 * lhs.abs().max().item())


@settings(max_examples=40, deadline=None)
@given(d_in=st.integers(4, 24), d_out=st.integers(2, 12), n=st.integers(1, 5),
       n_past=st.integers(0, 5), preserved=st.integers(1, 20), l2=st.floats(1e-2, 100.0),
       seed=st.integers(0, 10_000))
def test_alphaedit_update_vanishes_on_preserved_keys(d_in, d_out, n, n_past, preserved, l2, seed):
    preserved = min(preserved, d_in - 1)
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    # C with `preserved` large eigenvalues and the rest tiny: the null space is the tiny part.
    values = torch.cat([torch.rand(preserved, generator=g, dtype=torch.float64) + 1.0,
                        torch.rand(d_in - preserved, generator=g, dtype=torch.float64) * 1e-4])
    moment = basis @ torch.diag(values) @ basis.T
    projection = null_space_projection(moment, 1e-2).double()
    torch.testing.assert_close(projection, basis[:, preserved:] @ basis[:, preserved:].T)
    keys = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    past = torch.randn(n_past, d_in, generator=g, dtype=torch.float64) if n_past else None
    residual = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    left, right = null_space_update(keys, residual, projection, past, l2)
    delta = left.double() @ right.double().T
    kept = basis[:, :preserved] @ torch.randn(preserved, 8, generator=g, dtype=torch.float64)
    scale = delta.abs().max() * kept.abs().max() * d_in
    assert (delta @ kept).abs().max() <= 1e-5 * scale + 1e-12
    assert torch.linalg.matrix_rank(delta) <= n


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), d=st.integers(2, 48), seed=st.integers(0, 10_000),
       spread=st.floats(0.0, 0.5))  # gains within 100× of the median: none zeroed
def test_post_norm_inverse_is_exact_when_the_rms_is_kept(n, d, seed, spread):
    """N(m + R_m) = N(m) + R for every target N(m) + R = γ ⊙ u with rms(u) = 1 (a reachable one)."""
    g = torch.Generator().manual_seed(seed)
    gain = 3.0 * torch.exp(spread * torch.randn(d, generator=g, dtype=torch.float64))
    outputs = torch.randn(n, d, generator=g, dtype=torch.float64) * 5.0

    def norm(x):
        return gain * x / x.pow(2).mean(-1, keepdim=True).sqrt()

    unit = torch.randn(n, d, generator=g, dtype=torch.float64)
    unit = unit / unit.pow(2).mean(-1, keepdim=True).sqrt()
    residual = gain * unit - norm(outputs)
    change = invert_post_norm(residual, outputs, gain.float()).double()
    torch.testing.assert_close(norm(outputs + change), norm(outputs) + residual,
                               rtol=1e-4, atol=1e-4 * gain.max().item())


def test_post_norm_inverse_ignores_dimensions_without_gain():
    gain = torch.tensor([2.0, 1e-6, 3.0, -4.0])
    change = invert_post_norm(torch.ones(1, 4), torch.ones(1, 4), gain)
    assert change[0, 1] == 0 and torch.isfinite(change).all()
    torch.testing.assert_close(change[0, [0, 2, 3]], torch.tensor([0.5, 1 / 3, -0.25]))


def test_post_norm_layout_and_gain():
    gemma, llama = tiny_model("gemma3"), tiny_model("llama")
    assert llama.layout.post_norm_name(1) is None
    name = gemma.layout.post_norm_name(1)
    assert name == "model.layers.1.post_feedforward_layernorm"
    norm = gemma.module(name)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-0.5, 4.0, norm.weight.numel()))
    # Gemma's RMSNorm scales by (1 + w); the gain read off the module must say so.
    torch.testing.assert_close(norm_gain(norm, norm.weight.numel()), 1 + norm.weight.detach(),
                               rtol=1e-5, atol=1e-5)


def test_memit_through_a_post_norm_lands_near_its_targets(data_dir):
    """On a Gemma-3 with Gemma-like post-MLP gains (median ~5), the published spread — which
    writes the residual straight into the MLP output — overshoots by orders of magnitude; mapped
    through the norm's inverse it moves the residual towards z."""
    from editgate.editors.base import block_name, module_output_at
    from editgate.editors.memit import request_targets
    from editgate.editors.rome import context_template_groups

    lm = tiny_model("gemma3")
    g = torch.Generator().manual_seed(0)
    for layer in range(lm.num_layers):
        weight = lm.module(lm.layout.post_norm_name(layer)).weight
        with torch.no_grad():
            weight.copy_(5 * torch.exp(0.7 * torch.randn(weight.shape, generator=g)) - 1)
    requests = REQUESTS[:2]
    prompts, subjects = [r.prompt for r in requests], [r.subject for r in requests]
    miss = {}
    for through in (False, True):
        hp = EDITORS.get("memit")().hparams(
            lm, {**TINY_HPARAMS["memit"], "mom2_weight": 1.0, "through_post_norm": through})
        ctx = EditContext(lm, data_dir)
        groups = context_template_groups(lm, hp.context_template_length_params, ctx.seed)
        targets = request_targets(ctx, requests, hp, [t for group in groups for t in group])
        top = block_name(lm, hp.layers[-1])
        before = (targets - module_output_at(lm, top, prompts, subjects)).norm()
        handle = EDITORS.get("memit")().edit(ctx, requests, hp).apply(lm.model)
        try:
            miss[through] = (targets - module_output_at(lm, top, prompts, subjects)).norm()
        finally:
            handle.revert()
    assert miss[True] < 0.5 * before < miss[False]


@settings(max_examples=60, deadline=None)
@given(fraction=st.floats(0.0, 1.0), seed=st.integers(0, 10_000), low_rank=st.booleans())
def test_rect_keeps_the_top_fraction_by_the_reference_rule(fraction, seed, low_rank):
    lm = tiny_model("llama")
    name = lm.layout.weight_name(1)
    shape = lm.model.get_parameter(name).shape
    g = torch.Generator().manual_seed(seed)
    update = (LowRank(torch.randn(shape[0], 1, generator=g), torch.randn(shape[1], 1, generator=g))
              if low_rank else torch.randn(shape, generator=g))
    delta = WeightDelta({name: update})
    kept = rect(delta, lm, fraction).dense(name)
    n = kept.numel()
    k = int(n * (1.0 - fraction))  # kthvalue's k: everything from the k-th smallest ratio on
    expected = 0 if fraction <= 0 else n if k == 0 else n - k + 1  # distinct ratios
    assert int((kept != 0).sum()) == expected
    dense = delta.dense(name)
    nonzero = kept != 0
    assert torch.equal(kept[nonzero], dense[nonzero])  # kept entries are untouched
    if 0 < expected < n:  # and they are the largest relative changes
        relative = (dense / lm.model.get_parameter(name).detach()).abs()
        assert relative[nonzero].min() >= relative[~nonzero].max()


def test_composed_editors_take_both_hparam_files(tiny):
    for name, base in (("rome+rect", "rome"), ("memit+rect", "memit")):
        composed = EDITORS.get(name)()
        hp = composed.hparams(tiny, {"keep_fraction": 0.5})
        base_hp = EDITORS.get(base)().hparams(tiny)
        assert hp.keep_fraction == 0.5
        for field in dataclasses.fields(base_hp):
            assert getattr(hp, field.name) == getattr(base_hp, field.name), field.name


def test_ft_l_respects_the_norm_constraint(data_dir):
    lm = tiny_model("gpt2")
    delta = edit(lm, data_dir, "ft-l", REQUESTS, norm_constraint=1e-3, lr=1e-2)
    # GPT-2: weight and bias, as the references' module template names both.
    assert sorted(delta.updates) == [lm.layout.out_proj_name(1) + ".bias", lm.layout.weight_name(1)]
    for param in delta.updates:
        assert delta.dense(param).abs().max() <= 1e-3 + 1e-6
        assert delta.dense(param).shape == lm.model.get_parameter(param).shape  # Conv1D orientation


# ------------------------------------------------------------------ KN and MEND specifics


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_kn_integrated_gradients_are_complete(arch):
    """IG completeness: a layer's attributions sum to P(y | ā) − P(y | a = 0) at that layer.

    Checks the KV-cache batching (all layers × α steps as single-token rows) against plain
    forward passes with one layer's last-position activation zeroed.
    """
    from editgate.editors.kn import integrated_gradients

    lm = tiny_model(arch)
    prompt, token = REQUESTS[0].prompt, lm.encode(REQUESTS[0].target_true)[0]
    layers = list(range(lm.num_layers))
    attributions, _ = integrated_gradients(lm, prompt, token, layers, steps=64)
    ids = torch.tensor([lm.encode(prompt, bos=True)])
    full = lm.model(input_ids=ids).logits[0, -1].softmax(-1)[token]

    def zero_last(mod, args):
        x = args[0].clone()
        x[:, -1] = 0
        return (x,)

    for index, layer in enumerate(layers):
        handle = lm.module(lm.layout.out_proj_name(layer)).register_forward_pre_hook(zero_last)
        try:
            ablated = lm.model(input_ids=ids).logits[0, -1].softmax(-1)[token]
        finally:
            handle.remove()
        torch.testing.assert_close(attributions[index].sum(), full - ablated, rtol=0.05, atol=1e-5)


def test_mend_trains_once_then_loads(data_dir, monkeypatch, tmp_path):
    import editgate.editors.mend as mend

    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path))
    lm = tiny_model("llama")
    names = mend.edited_weights(lm, mend.MENDHParams(layers=(2, 3)))
    first = mend.trained_network(lm, names, "tiny", data_dir, log=lambda text: None)

    def no_training(*args, **kwargs):
        raise AssertionError("MEND retrained although a trained network is cached")

    monkeypatch.setattr(mend, "train", no_training)
    again = mend.trained_network(lm, names, "tiny", data_dir)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert again.train_seconds == pytest.approx(first.train_seconds, abs=0.1)


def test_readme_example_editor_joins_the_registry(data_dir, monkeypatch):
    """The README's "Writing your own editor" example, verbatim in spirit: decorate, then use."""
    from dataclasses import dataclass

    from editgate.editors.base import Editor
    from editgate.editors.rome import ROME

    monkeypatch.setattr(EDITORS, "_extra", dict(EDITORS._extra))  # keep the registry clean

    @dataclass(frozen=True)
    class HalfROMEHParams:
        scale: float = 0.5

    @EDITORS.register("half-rome")
    class HalfROME(Editor):
        name = "half-rome"
        HParams = HalfROMEHParams
        can_batch = False

        def edit(self, ctx, requests, hp):
            rome = ROME()
            delta = rome.edit(ctx, requests, rome.hparams(ctx.lm, TINY_HPARAMS["rome"]))
            return WeightDelta({n: hp.scale * delta.dense(n) for n in delta.updates},
                               {"editor": self.name})

    assert "half-rome" in EDITORS.names()
    lm = tiny_model("llama")
    editor = EDITORS.get("half-rome")()
    half = editor.edit(EditContext(lm, data_dir), REQUESTS[:1], editor.hparams(lm))
    full = edit(lm, data_dir, "rome", REQUESTS[:1])
    (param,) = full.updates
    torch.testing.assert_close(half.dense(param), 0.5 * full.dense(param))


def test_alphaedit_state_travels_with_cached_deltas(data_dir, monkeypatch, tmp_path):
    """Through the session: batch-2-sequential-4 accumulates 4 keys per layer, and a second run
    that loads every delta from the cache restores the same regime state (no global state)."""
    from editgate.cache import cache_path
    from editgate.delta import WeightDelta
    from editgate.profiles import get_profile
    from editgate.regimes import EditCase, Regime
    from editgate.session import EditgateSession, Settings

    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path))
    overrides = {"alphaedit": TINY_HPARAMS["alphaedit"]}
    case = EditCase("alphaedit", Regime.parse("batch-2-sequential-4"), 4)
    keys = []
    for _ in range(2):
        session = EditgateSession(Settings("tiny-llama", data_dir, get_profile("quick"),
                                           hparam_overrides=overrides))
        with session.edited(case) as state:
            assert state.error is None, state.error
            keys.append(state.state_key)
    assert keys[0] == keys[1]
    _, saved = WeightDelta.load_with_extra(cache_path("deltas", keys[0], ".safetensors"))
    for layer in TINY_HPARAMS["alphaedit"]["layers"]:
        assert saved[STATE_KEY.format(layer=layer)].shape[0] == 4


def test_memit_family_shares_targets_on_the_same_weights(data_dir, monkeypatch, tmp_path):
    """MEMIT, AlphaEdit and MEMIT+RECT on the same named weights optimise each z_i once; the
    cached targets give the very delta a fresh optimisation gives; other weights recompute."""
    import editgate.editors.memit as memit

    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path))
    lm = tiny_model("llama")
    calls = []
    original = memit.compute_value
    monkeypatch.setattr(memit, "compute_value",
                        lambda *args: calls.append(args[1].case_id) or original(*args))
    requests = REQUESTS[:2]

    # The z settings of MEMIT's (the family tables differ: AlphaEdit's LLaMA lr is 0.1).
    memit_hp = EDITORS.get("memit")().hparams(lm, TINY_HPARAMS["memit"])
    shared = {name: getattr(memit_hp, name) for name in memit.TARGET_SETTINGS}

    def run(name: str, weights_key: str) -> WeightDelta:
        editor = EDITORS.get(name)()
        hp = editor.hparams(lm, {**TINY_HPARAMS[name], **shared})
        return editor.edit(EditContext(lm, data_dir, weights_key=weights_key), requests, hp)

    fresh = run("memit", "")  # unnamed weights: no caching
    cached_first = run("memit", "base")
    assert calls == ["t-1", "t-2"] * 2
    cached_again = run("memit", "base")
    run("memit+rect", "base")
    run("alphaedit", "base")
    assert calls == ["t-1", "t-2"] * 2  # every later editor reused the targets
    for delta in (cached_first, cached_again):
        for name in fresh.updates:
            torch.testing.assert_close(delta.dense(name), fresh.dense(name))
    run("memit", "after-some-other-edit")
    assert calls == ["t-1", "t-2"] * 3
