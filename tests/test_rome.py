"""ROME's math (property tests) and its mechanics on tiny GPT-2 / Llama / Gemma models."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editgate.editors.base import EditContext, mlp_keys, weight_out_in
from editgate.editors.rome import ROME, rank_one_update
from editgate.edits import EditRequest
from editgate.models import weights_digest

REQUEST = EditRequest("t-1", "The mother tongue of Danielle Darrieux is", "Danielle Darrieux",
                      " English", " French", ("Danielle Darrieux speaks",),
                      ("Michel Rocard speaks",), " French")


@settings(max_examples=40, deadline=None)
@given(d_out=st.integers(2, 12), d_in=st.integers(2, 12), seed=st.integers(0, 10_000),
       use_moment=st.booleans(), consistent=st.booleans())
def test_rank_one_update_properties(d_out, d_in, seed, use_moment, consistent):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    k_star = torch.randn(d_in, generator=g, dtype=torch.float64)
    key = k_star if consistent else k_star + 0.1 * torch.randn(d_in, generator=g,
                                                                dtype=torch.float64)
    v_star = torch.randn(d_out, generator=g, dtype=torch.float64)
    moment = None
    if use_moment:
        a = torch.randn(d_in, 3 * d_in, generator=g, dtype=torch.float64)
        moment = a @ a.T / (3 * d_in) + 0.1 * torch.eye(d_in, dtype=torch.float64)
    left, right = rank_one_update(weight, k_star, key, v_star, moment)
    delta = torch.outer(left.double(), right.double())
    assert torch.linalg.matrix_rank(delta) == 1
    # The edited weight maps the key to exactly the new value ...
    torch.testing.assert_close((weight + delta) @ key, v_star, rtol=1e-4, atol=1e-4)
    # ... and leaves every x with uᵀx = 0 (orthogonal to u = C⁻¹k*) unchanged.
    x = torch.randn(d_in, generator=g, dtype=torch.float64)
    u = right.double()
    x = x - (u @ x) / (u @ u) * u
    torch.testing.assert_close(delta @ x, torch.zeros(d_out, dtype=torch.float64), atol=1e-4,
                               rtol=0)


def _edit(lm, data_dir, **overrides):
    editor = ROME()
    hp = editor.hparams(lm, {"layer": 1, "steps": 5, "context_template_length_params": ((3, 2),),
                             "mom2_tokens": 2048, **overrides})
    return editor.edit(EditContext(lm, data_dir), [REQUEST], hp), hp


def test_rome_is_rank_one_and_pure(tiny, data_dir):
    before = weights_digest(tiny.model)
    delta, hp = _edit(tiny, data_dir)
    assert weights_digest(tiny.model) == before  # edit() computes, never mutates
    (name,) = delta.updates
    assert name == tiny.layout.weight_name(hp.layer)
    assert delta.rank(name) == 1
    again, _ = _edit(tiny, data_dir)  # no state leaks between calls: same inputs, same delta
    assert torch.equal(delta.dense(name), again.dense(name))


def test_rome_writes_v_star_at_the_key(tiny, data_dir):
    """After applying, the MLP output at k* moves by exactly ΔW k* (C = I, consistent key)."""
    delta, hp = _edit(tiny, data_dir, mom2=False, consistent_key=True,
                      context_template_length_params=())
    k_star = mlp_keys(tiny, hp.layer, [REQUEST.prompt], [REQUEST.subject])[0]
    w_before = weight_out_in(tiny, hp.layer).detach().clone()
    with delta.applied(tiny.model):
        w_after = weight_out_in(tiny, hp.layer).detach().clone()
    change = (w_after - w_before) @ k_star
    dense = delta.dense(next(iter(delta.updates)))
    expected = (dense.T if tiny.layout.transposed else dense) @ k_star
    torch.testing.assert_close(change, expected, rtol=1e-4, atol=1e-5)


def test_rome_with_covariance_on_gpt2_conv1d(data_dir):
    from editgate.testing import tiny_model

    lm = tiny_model("gpt2")
    delta, hp = _edit(lm, data_dir, mom2=True)
    (name,) = delta.updates
    assert name.endswith("mlp.c_proj.weight")
    assert delta.dense(name).shape == lm.module(lm.layout.out_proj_name(hp.layer)).weight.shape
