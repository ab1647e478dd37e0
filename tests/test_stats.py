"""Covariance statistics: one pass for several layers, stopped early, cached, and accurate."""

from __future__ import annotations

import pytest
import torch

from editgate.stats import second_moments
from editgate.testing import tiny_model

TOKENS = 4096


@pytest.fixture()
def lm(monkeypatch, tmp_path):
    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path))
    return tiny_model("llama")


def test_one_pass_for_all_layers_stopped_after_the_deepest_then_cached(lm, data_dir):
    calls = {"forward": 0, "above": 0}
    top = lm.model.get_submodule(lm.layout.layers_path)
    h1 = lm.model.register_forward_pre_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    h2 = top[3].register_forward_pre_hook(lambda *a: calls.__setitem__("above", calls["above"] + 1))
    try:
        moments = second_moments(lm, [0, 2, 1], data_dir, n_tokens=TOKENS, batch_rows=8)
        batches = calls["forward"]
        assert batches == -(-TOKENS // 256 // 8)  # one pass: ceil(windows / batch rows) calls
        assert calls["above"] == 0  # layer 3 never ran: the pass stops after layer 2's MLP
        again = second_moments(lm, [1, 2], data_dir, n_tokens=TOKENS, batch_rows=8)
        assert calls["forward"] == batches  # served from the cache
    finally:
        h1.remove()
        h2.remove()
    assert list(moments) == [0, 2, 1]
    for layer in (1, 2):
        assert torch.equal(again[layer], moments[layer])
    for moment in moments.values():
        assert moment.dtype == torch.float64
        torch.testing.assert_close(moment, moment.T)
        assert torch.linalg.eigvalsh(moment).min() > -1e-6  # a second moment is PSD


def test_bf16_statistics_agree_with_float32(lm, data_dir):
    """bf16 forward + bf16 products stay within ~1 % of an all-float32 computation."""
    fast = second_moments(lm, [1, 3], data_dir, n_tokens=TOKENS)
    exact = second_moments(lm, [1, 3], data_dir, n_tokens=TOKENS, autocast_bf16=False)
    for layer in (1, 3):
        error = (fast[layer] - exact[layer]).norm() / exact[layer].norm()
        assert 0 < error < 2e-2, (layer, error)


def test_corrupted_cache_file_is_recomputed(lm, data_dir):
    from editgate.cache import cache_root

    first = second_moments(lm, [1], data_dir, n_tokens=TOKENS)[1]
    (path,) = (cache_root() / "stats").glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    torch.testing.assert_close(second_moments(lm, [1], data_dir, n_tokens=TOKENS)[1], first)
