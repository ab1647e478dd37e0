"""Every registered ability: the fast runner's per-item results equal the one-at-a-time reference.

Prompts are SmolLM2's configured forms (k-shot prefixes, chat wrapping, calibration), run on a
tiny random Llama with a long context so the real task texts fit; generation caps are shortened
so the plain reference (a full forward per generated token) stays cheap.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import ReferenceRunner

from editgate.data import load_dataset
from editgate.evaluate import evaluate, prepare
from editgate.profiles import PROFILES
from editgate.registry import ABILITIES
from editgate.runner import AbilityRunner
from editgate.testing import tiny_model

PAPER_EIGHT = ("reasoning", "nli", "open_qa", "closed_qa", "dialogue", "summarization", "ner",
               "sentiment")


@pytest.fixture(scope="module")
def long_tiny():
    return tiny_model("llama", positions=8192)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path / "cache"))


def _run(name, data_dir, limit=2):
    run = prepare(name, data_dir, "smollm2-135m", PROFILES["standard"], limit=limit)
    if hasattr(run.ability, "max_new_tokens"):
        run.ability.max_new_tokens = 6  # instance attribute: the class keeps its cap
    return run


def _assert_same(fast, reference):
    assert [r.item_id for r in fast] == [r.item_id for r in reference]
    for got, want in zip(fast, reference):
        assert got.prediction == want.prediction, got.item_id
        assert got.gold == want.gold
        assert got.metrics.keys() == want.metrics.keys()
        for key, value in want.metrics.items():
            assert got.metrics[key] == pytest.approx(value, abs=1e-4), (got.item_id, key)


def test_all_abilities_are_registered():
    assert set(PAPER_EIGHT) | {"perplexity", "kl_drift"} <= set(ABILITIES.names())


@pytest.mark.parametrize("name", sorted(set(ABILITIES.names()) - {"kl_drift"}))
def test_fast_runner_matches_reference(name, long_tiny, data_dir):
    run = _run(name, data_dir)
    runner = AbilityRunner(long_tiny, max_batch_size=2, generation_batch_size=2)
    fast = evaluate(run, runner)
    reference = evaluate(run, ReferenceRunner(runner))
    _assert_same(fast, reference)
    metrics = {m.name for m in run.ability.metrics}
    assert all(metrics <= r.metrics.keys() for r in fast)  # standard profile: every metric


def test_kl_drift_matches_reference_and_sees_an_edit(long_tiny, data_dir):
    run = _run("kl_drift", data_dir)
    runner = AbilityRunner(long_tiny, max_batch_size=2)
    base = evaluate(run, runner, state="base")  # caches the unedited top-k distributions
    assert all(r.metrics["neg_kl"] == 0.0 for r in base)
    # Unchanged weights under an "edited" state key: drift is zero up to float noise.
    same = evaluate(run, runner, state="edited")
    assert all(abs(r.metrics["neg_kl"]) < 1e-5 for r in same)
    weight = long_tiny.model.get_output_embeddings().weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(0.5 * torch.randn_like(weight, generator=torch.Generator().manual_seed(0)))
        fast = evaluate(run, runner, state="edited")
        reference = evaluate(run, ReferenceRunner(runner), state="edited")
    finally:
        with torch.no_grad():
            weight.copy_(original)
    _assert_same(fast, reference)
    assert all(r.metrics["neg_kl"] < -1e-3 for r in fast)  # KL > 0: the drift is seen


def test_kl_drift_needs_its_baseline_first(long_tiny, data_dir):
    run = _run("kl_drift", data_dir, limit=1)
    with pytest.raises(RuntimeError, match="score the baseline before editing"):
        evaluate(run, AbilityRunner(long_tiny), state="edited")


@pytest.mark.parametrize("name", PAPER_EIGHT)
def test_selection_is_deterministic_and_never_scores_shots(name, data_dir):
    first, second = _run(name, data_dir, limit=50), _run(name, data_dir, limit=50)
    assert [i.id for i in first.items] == [i.id for i in second.items]
    assert [s.id for s in first.shots] == [s.id for s in second.shots]
    records = load_dataset(first.ability.dataset, data_dir).records
    pool = {i.source for i in first.ability.split(records)[0]}
    assert not pool & {i.source for i in first.items}
    assert {s.source for s in first.shots} <= pool
    assert len(first.shots) == first.style.shots


def test_quick_profile_builds_no_generation_requests(long_tiny, data_dir):
    for name in PAPER_EIGHT:
        run = dataclasses.replace(_run(name, data_dir, limit=2), generation=False)
        for item in run.items:
            kinds = {type(r).__name__ for r in
                     run.ability.requests(item, run.shots, run.style, long_tiny, False).values()}
            assert "Generate" not in kinds, name
