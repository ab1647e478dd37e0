"""The detection-power study: identical weights never alarm, and more damage is caught more often."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editgate.evaluate import prepare
from editgate.gate import Tolerances
from editgate.models import param_digests
from editgate.power import PowerRow, detection_rate, markdown, noise_delta, smallest_detected, study
from editgate.profiles import get_profile


@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=40),
       st.sampled_from([5, 25]))
@settings(max_examples=30, deadline=None)
def test_zero_differences_never_alarm(values, size):
    diffs = np.zeros(len(values))
    assert detection_rate(diffs, size, 0.0, 20, np.random.default_rng(0)) == 0.0


def test_consistent_large_drop_always_alarms():
    diffs = -np.ones(100)
    assert detection_rate(diffs, 25, 0.05, 20, np.random.default_rng(0)) == 1.0
    assert detection_rate(diffs, 25, 1.5, 20, np.random.default_rng(0)) == 0.0  # within tolerance


def _row(scale, drop, rate, size=25):
    return PowerRow("a", "m", "paper", "m", scale, drop, drop, size, 0.05, rate, rate)


def test_smallest_detected_needs_every_larger_damage_detected():
    rows = [_row(0.0, 0.0, 0.0), _row(0.1, 0.02, 0.9), _row(0.2, 0.05, 0.5), _row(0.3, 0.1, 0.95)]
    assert smallest_detected(rows)[("a", "m", 25)] == 0.1
    assert smallest_detected([_row(0.1, 0.02, 0.1)])[("a", "m", 25)] is None


def test_noise_delta_is_seeded_and_reverts(tiny_llama_lm):
    lm = tiny_llama_lm
    first, second = noise_delta(lm, 0.1, seed=3), noise_delta(lm, 0.1, seed=3)
    assert first.updates.keys() == second.updates.keys() and len(first.updates) == lm.num_layers
    assert all(bool((first.dense(k) == second.dense(k)).all()) for k in first.updates)
    assert not noise_delta(lm, 0.0)
    before = param_digests(lm.model)
    with first.applied(lm.model):
        assert param_digests(lm.model) != before
    assert param_digests(lm.model) == before


def test_study_on_a_tiny_model(tiny_llama_lm, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path))
    run = prepare("sentiment", data_dir, "tiny-llama", get_profile("quick"), 12)
    (tmp_path / "tolerances.toml").write_text("[default]\naccuracy = 0.05\nmargin = 0.25\n")
    tolerances = Tolerances.load(tmp_path / "tolerances.toml")
    rows = study(tiny_llama_lm, [run], tolerances, [0.0, 0.5], [6], trials=10)
    noop = [r for r in rows if r.scale == 0]
    assert noop and all(r.rate == 0 and r.rate_test_only == 0 and r.drop == 0 for r in noop)
    assert {r.metric for r in rows} == {"accuracy", "margin"}
    table = markdown(rows, [6], "tiny-llama", 10, 12)
    assert "False alarms of `noop`" in table and "0%" in table


@pytest.fixture
def tiny_llama_lm():
    from editgate.models import load_model

    return load_model("tiny-llama")
