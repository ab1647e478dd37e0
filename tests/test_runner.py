"""The fast runner agrees item by item with the plain reference scorer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_generate, reference_loglikelihood

from editgate.runner import AbilityRunner, Choices, Distributions, Generate

WORDS = ["The", " capital", " of", " France", " is", " Paris", " Review", ":", " a", " charming",
         " journey", ".", " Sentiment", " positive", " negative", "\n", " Lyon", " French", " 4"]
PREFIX = "Question: what is two plus two? Answer: four.\n\n"

text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map("".join)
request = st.builds(
    Choices, context=text,
    continuations=st.lists(text, min_size=1, max_size=4).map(tuple),
    prefix=st.sampled_from(["", PREFIX]))


@settings(max_examples=15, deadline=None)
@given(requests=st.lists(request, min_size=1, max_size=8), budget=st.sampled_from([16, 64, 4096]))
def test_loglikelihood_matches_reference(tiny, requests, budget):
    runner = AbilityRunner(tiny, max_batch_tokens=budget, max_batch_size=3)
    fast = runner.loglikelihood(requests)
    for req, scores in zip(requests, fast):
        reference = reference_loglikelihood(runner, req)
        for (logprob, greedy), got, got_greedy in zip(reference, scores.logprobs,
                                                      scores.is_greedy):
            assert got == pytest.approx(logprob, abs=1e-4)
            assert got_greedy == greedy


@settings(max_examples=8, deadline=None)
@given(contexts=st.lists(text, min_size=1, max_size=6), prefix=st.sampled_from(["", PREFIX]),
       cap=st.integers(1, 12), stop=st.sampled_from([(".",), ("\n\n",), (" of", "is")]))
def test_generation_matches_reference(tiny, contexts, prefix, cap, stop):
    runner = AbilityRunner(tiny, generation_batch_size=4)
    requests = [Generate(c, stop=stop, max_new_tokens=cap, prefix=prefix) for c in contexts]
    assert runner.generate(requests) == [reference_generate(runner, r) for r in requests]


def test_outputs_keep_input_order(tiny):
    runner = AbilityRunner(tiny, max_batch_size=2)
    requests = [Choices("The capital" * n, (" of",)) for n in (1, 5, 2, 4, 3)]
    scores = runner.loglikelihood(requests)
    for req, got in zip(requests, scores):
        assert got.logprobs[0] == pytest.approx(reference_loglikelihood(runner, req)[0][0],
                                                abs=1e-4)


def test_distributions_reach_reduce_as_they_are_made(tiny):
    """A row's [T, vocab] log-probs go to ``reduce`` before the batch's next head call: held all
    at once they were a whole token budget of vocabulary rows (4.3 GB for Gemma's 262k)."""
    runner = AbilityRunner(tiny)
    runner.head_positions = 4  # several head calls within one batch
    events: list[str] = []
    head = runner.logits
    runner.logits = lambda hidden: (events.append("head"), head(hidden))[1]

    def reduce(logprobs, targets):
        events.append("reduce")
        return float(logprobs.gather(1, targets[:, None]).sum())

    requests = [Distributions("The capital", " of France is Paris." * n, reduce) for n in (1, 2, 3)]
    got = runner.distributions(requests)
    assert events.count("head") >= 3 and events.count("reduce") == 3
    last_head = len(events) - 1 - events[::-1].index("head")
    assert events.index("reduce") < last_head  # streamed, not collected first
    for req, value in zip(requests, got):
        reference = reference_loglikelihood(runner, Choices(req.context, (req.continuation,)))
        assert value == pytest.approx(reference[0][0], abs=1e-4)


def test_batch_limits_are_part_of_the_fingerprint(tiny):
    """Other batch shapes round differently, so their results get their own cache keys."""
    default, small = AbilityRunner(tiny), AbilityRunner(tiny, max_batch_size=8)
    assert default.fingerprint == AbilityRunner(tiny).fingerprint != small.fingerprint
    assert (AbilityRunner(tiny, eval_dtype="bfloat16").fingerprint
            != AbilityRunner(tiny, eval_dtype="bfloat16", max_batch_tokens=1024).fingerprint)


def _partition_cost(runner, batches, cost, body, span, past, cap, overhead):
    """The padded work of ``batches``, or None when one breaks the runner's limits."""
    total = 0
    for batch in batches:
        worst, longest = max(cost[i] for i in batch), max(span[i] for i in batch)
        mixed = (runner.window is not None and past + longest > runner.window
                 and len({body[i] for i in batch}) > 1)
        if len(batch) > cap or (len(batch) > 1 and (worst * len(batch)
                                                    > runner.max_batch_tokens or mixed)):
            return None
        total += worst * len(batch) + overhead
    return total


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 8)), min_size=1, max_size=8),
       budget=st.integers(8, 120), cap=st.integers(1, 5), overhead=st.sampled_from([0, 7, 128]),
       window=st.sampled_from([None, 24]))
def test_batches_are_the_cheapest_split(tiny, rows, budget, cap, overhead, window):
    """The dynamic-programming split costs exactly the least of every split into consecutive
    runs that keeps the limits (found by brute force), and keeps the rows in order."""
    runner = AbilityRunner(tiny, max_batch_tokens=budget)
    runner.window = window
    body = [length for length, _ in rows]
    cost = span = [length + extra for length, extra in rows]
    order = sorted(range(len(rows)), key=lambda i: -body[i])
    args = (cost, body, span, 2, cap, overhead)
    batches = runner._batches(order, cost, cap, body, span, 2, overhead)
    assert [i for batch in batches for i in batch] == order
    cheapest = min(
        c for cuts in range(1 << (len(order) - 1))
        if (c := _partition_cost(runner, _split(order, cuts), *args)) is not None)
    assert _partition_cost(runner, batches, *args) == cheapest


def _split(order, cuts):
    """``order`` cut after position k wherever bit k of ``cuts`` is set."""
    batches, current = [], []
    for k, index in enumerate(order):
        current.append(index)
        if cuts >> k & 1 or k == len(order) - 1:
            batches.append(current)
            current = []
    return batches


def test_empty_continuation_is_an_error(tiny):
    runner = AbilityRunner(tiny)
    with pytest.raises(ValueError, match="empty continuation"):
        runner.loglikelihood([Choices("The capital", ("",))])


@pytest.mark.real_model
def test_sentiment_items_match_reference_on_smollm2(smollm2, data_dir):
    from editgate.evaluate import prepare
    from editgate.profiles import PROFILES

    run = prepare("sentiment", data_dir, "smollm2-135m", PROFILES["quick"], limit=12)
    runner = AbilityRunner(smollm2)
    requests = [run.ability.requests(i, run.shots, run.style, smollm2, False)["label"]
                for i in run.items]
    for req, scores in zip(requests, runner.loglikelihood(requests)):
        reference = [lp for lp, _ in reference_loglikelihood(runner, req)]
        assert scores.logprobs == pytest.approx(reference, abs=1e-3)


def test_bf16_evaluation_keeps_float32_weights_and_head(tiny):
    """bf16 autocast changes the matmuls only: weights untouched, log-probs close to float32,
    a different results-cache fingerprint, and nothing left autocast after the evaluation."""
    import torch

    exact, mixed = AbilityRunner(tiny), AbilityRunner(tiny, eval_dtype="bfloat16")
    assert (exact.eval_dtype, mixed.eval_dtype) == ("float32", "bfloat16")
    assert exact.fingerprint == AbilityRunner(tiny).fingerprint != mixed.fingerprint
    requests = [Choices("The capital of France is", (" Paris", " Lyon")),
                Choices("Review: a charming journey. Sentiment:", (" positive", " negative"))]
    before = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    with mixed.precision():
        assert torch.is_autocast_enabled("cpu")
        hidden = torch.randn(2, tiny.config.hidden_size)
        assert mixed.logits(hidden).dtype == torch.float32  # the head runs in float32
        approx = mixed.loglikelihood(requests)
    assert not torch.is_autocast_enabled("cpu")
    for got, want in zip(approx, exact.loglikelihood(requests)):
        assert got.logprobs == pytest.approx(want.logprobs, abs=0.05)
    for name, param in tiny.model.named_parameters():
        assert param.dtype == torch.float32 and torch.equal(param, before[name])


def test_generation_runs_in_its_own_precision(tiny):
    """Under bf16 scoring, generation still runs in float32 by default: the same texts as a
    float32 runner, autocast off inside it and back on after; its precision joins the key."""
    import torch

    requests = [Generate(c, stop=(".",), max_new_tokens=6) for c in
                ("The capital of France is", "Review: a charming journey", "Lyon")]
    exact, mixed = AbilityRunner(tiny), AbilityRunner(tiny, eval_dtype="bfloat16")
    assert mixed.generation_dtype == "float32"
    seen = []
    step = mixed.decoder.forward
    mixed.decoder.forward = lambda *a, **k: (seen.append(torch.is_autocast_enabled("cpu")),
                                             step(*a, **k))[1]
    with mixed.precision():
        assert mixed.generate(requests) == exact.generate(requests)
        assert torch.is_autocast_enabled("cpu")
    del mixed.decoder.forward
    assert seen and not any(seen)
    lowered = AbilityRunner(tiny, eval_dtype="bfloat16", generation_dtype="bfloat16")
    assert len({exact.fingerprint, mixed.fingerprint, lowered.fingerprint}) == 3
    with pytest.raises(ValueError, match="unknown generation dtype 'int4'"):
        AbilityRunner(tiny, generation_dtype="int4")


def test_bf16_weights_need_no_autocast():
    import torch

    from editgate.testing import tiny_model

    lm = tiny_model("llama")  # its own copy: the session's tiny models stay float32
    lm.model.to(torch.bfloat16)
    runner = AbilityRunner(lm, eval_dtype="bfloat16")
    assert runner.autocast_dtype is None and runner.eval_dtype == "bfloat16"
    assert runner.fingerprint == AbilityRunner(lm).fingerprint  # as if asked for its own dtype


def test_unknown_eval_dtype_is_an_error(tiny):
    with pytest.raises(ValueError, match="unknown eval dtype 'fp8'"):
        AbilityRunner(tiny, eval_dtype="fp8")
