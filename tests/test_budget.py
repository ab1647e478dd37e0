"""The edit-budget search finds a planted budget exactly, scoring O(log N) states."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from editgate.budget import search_budget


@st.composite
def chains(draw):
    """(total edits, batch size, planted budget: the last edit count at which gates pass)."""
    step = draw(st.sampled_from([1, 2, 10, 100]))
    calls = draw(st.integers(1, 300))
    planted = draw(st.integers(0, calls)) * step
    return calls * step, step, planted


@given(chains())
def test_search_finds_the_planted_budget_exactly(chain):
    total, step, planted = chain
    seen = []
    result = search_budget(lambda n: seen.append(n) or n <= planted, total, step=step)
    assert result.budget == planted
    assert result.first_failure == (None if planted == total else planted + step)
    assert all(n % step == 0 and 0 < n <= total for n in seen)
    assert len(seen) == len(set(seen)) == len(result.scored)  # no state scored twice
    assert len(seen) <= 2 * math.ceil(math.log2(total // step)) + 2


@given(chains(), st.integers(1, 50))
def test_a_coarser_resolution_scores_less_and_brackets_the_budget(chain, coarse):
    total, step, planted = chain
    result = search_budget(lambda n: n <= planted, total, step=step, resolution=coarse * step)
    assert result.budget <= planted
    if result.first_failure is not None:
        assert planted < result.first_failure and result.resolution <= coarse * step


def test_text_says_what_was_reached():
    assert search_budget(lambda n: True, 1000, step=100).text == "≥1000"
    assert search_budget(lambda n: n <= 300, 1000, step=100).text == "300"
    assert search_budget(lambda n: n <= 300, 1000, step=100, resolution=400).text == \
        "200 (fails by 400)"
    assert search_budget(lambda n: False, 1000, step=100).text == "0"
    with pytest.raises(ValueError, match="cannot stop every 3"):
        search_budget(lambda n: True, 10, step=3)
