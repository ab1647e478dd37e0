"""The paired gate, its bootstrap CI, tolerances and regime names."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editgate.abilities.base import ItemResult
from editgate.errors import ConfigError
from editgate.gate import Tolerances, bootstrap_ci, paired_gate
from editgate.regimes import EditCase, Regime


def _results(values):
    return [ItemResult(str(i), "p", "g", {"accuracy": v}) for i, v in enumerate(values)]


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-5, 5), min_size=1, max_size=60))
def test_identical_results_always_pass_with_zero_delta(values):
    result = paired_gate("a", "accuracy", _results(values), _results(values), tolerance=0.0)
    assert result.passed and result.delta == 0 and result.ci_low == result.ci_high == 0


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-5, 5), min_size=2, max_size=60))
def test_ci_contains_the_mean_and_is_deterministic(values):
    low, high = bootstrap_ci(values)
    mean = sum(values) / len(values)
    assert low - 1e-9 <= mean <= high + 1e-9
    assert (low, high) == bootstrap_ci(values)


def test_large_consistent_drop_fails_and_explains():
    base = _results([1.0] * 40)
    edited = _results([0.0] * 20 + [1.0] * 20)
    result = paired_gate("sentiment", "accuracy", base, edited, tolerance=0.05)
    assert not result.passed
    assert result.delta == pytest.approx(-0.5)
    text = result.explain()
    assert "baseline 1.0000 → edited 0.5000" in text and "OUTSIDE" in text
    assert "worst items" in text and len(result.worst) == 5


def test_small_drop_within_tolerance_passes():
    base = _results([1.0] * 100)
    edited = _results([0.0] * 2 + [1.0] * 98)
    assert paired_gate("s", "accuracy", base, edited, tolerance=0.05).passed


def test_non_finite_scores_fail():
    result = paired_gate("s", "accuracy", _results([1.0, 1.0]), _results([math.nan, 1.0]), 1.0)
    assert not result.passed


def test_mismatched_items_are_an_error():
    with pytest.raises(ValueError, match="different items"):
        paired_gate("s", "accuracy", _results([1.0, 1.0]), _results([1.0]), 0.1)


def test_tolerances_file_and_overrides(tmp_path):
    path = tmp_path / "tol.toml"
    path.write_text("[default]\naccuracy = 0.05\n[sentiment]\nmargin = 0.3\n"
                    "[edit_success]\nefficacy = 0.8\n")
    tol = Tolerances.load(path, ["sentiment.accuracy=0.1"])
    assert tol.tolerance("sentiment", "accuracy") == 0.1
    assert tol.tolerance("sentiment", "margin") == 0.3
    assert tol.tolerance("nli", "accuracy") == 0.05
    assert tol.success_threshold("efficacy") == 0.8
    with pytest.raises(ConfigError, match=r"no tolerance for nli\.margin"):
        tol.tolerance("nli", "margin")


@pytest.mark.parametrize("override", ["sentiment.accuracy", "accuracy=0.1", "a.b=x", "a.b=-1",
                                      "a.b=nan"])
def test_bad_tolerance_overrides(tmp_path, override):
    path = tmp_path / "tol.toml"
    path.write_text("[default]\naccuracy = 0.05\n")
    with pytest.raises(ConfigError, match="--tolerance"):
        Tolerances.load(path, [override])


@pytest.mark.parametrize("content", ["[default]\naccuracy = -1\n", "[default]\naccuracy = 'x'\n",
                                     "not toml ["])
def test_bad_tolerance_files(tmp_path, content):
    path = tmp_path / "tol.toml"
    path.write_text(content)
    with pytest.raises(ConfigError):
        Tolerances.load(path)


@pytest.mark.parametrize(("name", "batch", "total"), [
    ("single", 1, 1), ("sequential-10", 1, 10), ("batch-8", 8, 8),
    ("batch-5-sequential-20", 5, 20)])
def test_regime_names(name, batch, total):
    regime = Regime.parse(name)
    assert (regime.batch_size, regime.total) == (batch, total)


@pytest.mark.parametrize("name", ["double", "sequential-", "batch-0", "batch-3-sequential-10",
                                  "sequential-x"])
def test_bad_regime_names(name):
    with pytest.raises(ConfigError):
        Regime.parse(name)


def test_checkpoints_and_case_ids():
    regime = Regime.parse("sequential-20")
    assert regime.checkpoints() == [1, 10, 20]
    assert regime.checkpoints((5, 15, 99)) == [5, 15, 20]
    assert Regime.parse("batch-5-sequential-20").checkpoints((1, 5, 10)) == [5, 10, 20]
    assert EditCase("rome", regime, 10).id == "rome-sequential-20@10"
    assert EditCase("rome", regime, 20).id == "rome-sequential-20"
