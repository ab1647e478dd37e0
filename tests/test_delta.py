"""WeightDelta: in-place apply, bit-exact revert, save/load, refusal of bad deltas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editgate.delta import LowRank, WeightDelta, lowrank_update
from editgate.errors import EditFailure
from editgate.models import weights_digest
from editgate.testing import tiny_model

MODELS = {arch: tiny_model(arch) for arch in ("gpt2", "llama")}


def _random_delta(lm, seed: int, scale: float, low_rank: bool, n_params: int) -> WeightDelta:
    generator = torch.Generator().manual_seed(seed)
    params = [(n, p) for n, p in lm.model.named_parameters() if p.ndim == 2][:n_params]
    updates = {}
    for name, param in params:
        if low_rank:
            left = torch.randn(param.shape[0], 2, generator=generator) * scale
            right = torch.randn(param.shape[1], 2, generator=generator)
            updates[name] = LowRank(left, right)
        else:
            updates[name] = torch.randn(param.shape, generator=generator) * scale
    return WeightDelta(updates)


@settings(max_examples=25, deadline=None)
@given(arch=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(1e-8, 1e3), low_rank=st.booleans(), n_params=st.integers(1, 4))
def test_revert_is_bit_exact(arch, seed, scale, low_rank, n_params):
    lm = MODELS[arch]
    before = weights_digest(lm.model)
    delta = _random_delta(lm, seed, scale, low_rank, n_params)
    handle = delta.apply(lm.model)
    assert weights_digest(lm.model) != before
    handle.revert()
    assert weights_digest(lm.model) == before


@settings(max_examples=10, deadline=None)
@given(seeds=st.lists(st.integers(0, 1000), min_size=1, max_size=5))
def test_sequential_apply_reverts_in_reverse_order(seeds):
    lm = MODELS["llama"]
    before = weights_digest(lm.model)
    handles = [_random_delta(lm, s, 0.1, s % 2 == 0, 2).apply(lm.model) for s in seeds]
    for handle in reversed(handles):
        handle.revert()
    assert weights_digest(lm.model) == before


def test_apply_adds_in_place_without_copying_the_model():
    lm = MODELS["gpt2"]
    name, param = next((n, p) for n, p in lm.model.named_parameters() if p.ndim == 2)
    storage = param.data_ptr()
    original = param.detach().clone()
    update = torch.full(param.shape, 0.5)
    with WeightDelta({name: update}).applied(lm.model):
        assert param.data_ptr() == storage
        torch.testing.assert_close(param, original + 0.5)
    assert torch.equal(param, original)


def test_save_load_roundtrip(tmp_path):
    lm = MODELS["llama"]
    delta = _random_delta(lm, 3, 1.0, low_rank=True, n_params=2) + _random_delta(
        lm, 4, 1.0, low_rank=False, n_params=3)
    delta.meta["editor"] = "test"
    path = tmp_path / "delta.safetensors"
    delta.save(path)
    loaded = WeightDelta.load(path)
    assert loaded.meta == delta.meta
    assert set(loaded.updates) == set(delta.updates)
    for name in delta.updates:
        assert torch.equal(loaded.dense(name), delta.dense(name))
        assert type(loaded.updates[name]) is type(delta.updates[name])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_delta_is_refused_and_model_untouched(bad):
    lm = MODELS["llama"]
    before = weights_digest(lm.model)
    name, param = next((n, p) for n, p in lm.model.named_parameters() if p.ndim == 2)
    update = torch.zeros(param.shape)
    update[0, 0] = bad
    with pytest.raises(EditFailure, match="NaN or Inf"):
        WeightDelta({name: update}).apply(lm.model)
    assert weights_digest(lm.model) == before


def test_wrong_shape_and_unknown_parameter_are_refused():
    lm = MODELS["llama"]
    before = weights_digest(lm.model)
    with pytest.raises(EditFailure, match="does not have"):
        WeightDelta({"no.such.weight": torch.zeros(2, 2)}).apply(lm.model)
    name, param = next((n, p) for n, p in lm.model.named_parameters() if p.ndim == 2)
    good = next(n for n, p in lm.model.named_parameters() if p.ndim == 2 and n != name)
    with pytest.raises(EditFailure, match="shape"):
        # The good update comes first: a failure half-way must still leave the model untouched.
        WeightDelta({good: torch.zeros_like(dict(lm.model.named_parameters())[good]),
                     name: torch.zeros(param.shape[0] + 1, param.shape[1])}).apply(lm.model)
    assert weights_digest(lm.model) == before


def test_lowrank_update_respects_conv1d_orientation():
    left, right = torch.randn(5), torch.randn(3)  # ΔW: [out=5, in=3]
    linear = lowrank_update(False, left, right).dense()
    conv1d = lowrank_update(True, left, right).dense()
    assert linear.shape == (5, 3) and conv1d.shape == (3, 5)
    torch.testing.assert_close(conv1d, linear.T)
