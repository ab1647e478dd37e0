"""Throughput per ability: editgate's runner against lm-evaluation-harness on the same requests.

    pytest benchmarks --benchmark-only -s            # all abilities (tens of minutes on 2 cores)
    pytest benchmarks --benchmark-only -s -k nli     # one

Both sides get exactly the requests the ability builds (same items, same prompts, the shared
few-shot prefix simply prepended for lm-evaluation-harness, which has no such notion), on the same
model object. "tokens" counts the naive work — every choice's full prompt plus continuation, every
generation's prompt plus output — so tokens/s compares like with like. Agreement is per item: the
same chosen continuation and log-probs within 1e-2 nats per continuation token (lm-evaluation-harness
itself strays up to ~3e-3 from a plain unpadded forward, which editgate matches to ~1e-5), or the
same generated text.
Timings are the best of ``BENCH_ROUNDS`` (default 2) rounds; the CPU is shared, so they are noisy.

Each row also times editgate in its default precision (bf16 autocast over the float32 weights for
scoring, float32 for greedy generation; see the README's "Precision") and gives that run's
agreement with lm-evaluation-harness's float32 on
the decision alone: the same chosen continuation, or the same generated text. For every choice
item whose bf16 decision differs it prints lm-evaluation-harness's float32 gap between its two
best choices, to tell near-ties from real disagreements.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from editgate.evaluate import prepare
from editgate.profiles import PROFILES
from editgate.runner import AbilityRunner, Choices, Generate

ITEMS = {"sentiment": 200, "nli": 100, "closed_qa": 50, "dialogue": 50, "open_qa": 50,
         "reasoning": 16, "summarization": 24, "ner": 40, "perplexity": 50, "hellaswag": 100,
         "piqa": 100, "winogrande": 100, "lambada": 100}
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
LM_EVAL_BATCH = 16


@pytest.fixture(scope="session")
def harness(lm):
    huggingface = pytest.importorskip("lm_eval.models.huggingface",
                                      reason="pip install -e '.[bench]'")
    return huggingface.HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, device="cpu",
                            batch_size=LM_EVAL_BATCH)


def _best_of(rounds: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _harness_form(request):
    """The request as lm-evaluation-harness scores it: it moves a context's trailing whitespace
    into the continuation (and so scores one more token, e.g. the newline after WikiText's title);
    both sides get this form so that they score the same tokens."""
    if isinstance(request, Choices):
        stripped = request.context.rstrip()
        if stripped and stripped != request.context:
            space = request.context[len(stripped):]
            return Choices(stripped, tuple(space + c for c in request.continuations),
                           request.prefix)
    return request


def _harness_requests(requests):
    from lm_eval.api.instance import Instance

    pairs, generations = [], []
    for request in requests:
        if isinstance(request, Choices):
            pairs += [Instance("loglikelihood", {}, (request.prefix + request.context, c), 0)
                      for c in request.continuations]
        elif isinstance(request, Generate):
            generations.append(Instance("generate_until", {}, (
                request.prefix + request.context,
                {"until": list(request.stop), "max_gen_toks": request.max_new_tokens,
                 "do_sample": False}), 0))
    return pairs, generations


def _agree(ours, theirs, request, runner, *, decision_only: bool = False) -> bool:
    if isinstance(request, Generate):
        return ours.strip() == theirs.strip()
    logprobs = [lp for lp, _ in theirs]
    counts = [len(c) for c in runner.tokenize_choices(request).continuations]
    same_choice = (max(range(len(logprobs)), key=logprobs.__getitem__)
                   == max(range(len(logprobs)), key=ours.logprobs.__getitem__))
    close = all(abs(a - b) <= 1e-2 * n for a, b, n in zip(ours.logprobs, logprobs, counts))
    return same_choice and (close or decision_only)


@pytest.mark.parametrize("name", list(ITEMS))
def test_throughput_vs_lm_eval(benchmark, name, lm, harness, data_dir):
    run = prepare(name, data_dir, "smollm2-135m", PROFILES["standard"], limit=ITEMS[name])
    requests = [_harness_form(r) for item in run.items
                for r in run.ability.requests(item, run.shots, run.style, lm, True).values()]
    runner = AbilityRunner(lm)
    choices = [r for r in requests if isinstance(r, Choices)]
    generations = [r for r in requests if isinstance(r, Generate)]
    tokenizer = lm.tokenizer
    tokens = sum(len(tokenizer(r.prefix + r.context).input_ids) * len(r.continuations)
                 + sum(len(tokenizer(c).input_ids) for c in r.continuations) for r in choices)

    def ours():
        return runner.loglikelihood(choices), runner.generate(generations)

    scores, texts = benchmark.pedantic(ours, rounds=ROUNDS, iterations=1)
    ours_s = benchmark.stats.stats.min
    pairs, gen_instances = _harness_requests(requests)
    lm_s, (flat, their_texts) = _best_of(
        ROUNDS if not generations else 1,
        lambda: (harness.loglikelihood(pairs, disable_tqdm=True) if pairs else [],
                 harness.generate_until(gen_instances, disable_tqdm=True) if gen_instances else []))
    tokens += sum(len(tokenizer(r.prefix + r.context).input_ids) + len(tokenizer(t).input_ids)
                  for r, t in zip(generations, texts))

    mixed = AbilityRunner(lm, eval_dtype="bfloat16")  # the default precisions

    def ours_bf16():
        with mixed.precision():
            return mixed.loglikelihood(choices), mixed.generate(generations)

    bf16_s, (scores_bf16, texts_bf16) = _best_of(ROUNDS, ours_bf16)

    def agreement_with_harness(scores, texts, decision_only: bool) -> tuple[float, list[float]]:
        """The share of items that agree, and lm-evaluation-harness's gap between its two best
        choices (nats) on each choice item that does not."""
        cursor, agree, flipped_gaps = 0, [], []
        for request, score in zip(choices, scores):
            theirs = flat[cursor:cursor + len(request.continuations)]
            cursor += len(request.continuations)
            agree.append(_agree(score, theirs, request, runner, decision_only=decision_only))
            if not agree[-1] and len(theirs) > 1:
                best, second = sorted((lp for lp, _ in theirs), reverse=True)[:2]
                flipped_gaps.append(best - second)
        agree += [_agree(a, b, r, runner) for r, a, b in zip(generations, texts, their_texts)]
        return sum(agree) / len(agree), flipped_gaps

    agreement, _ = agreement_with_harness(scores, texts, decision_only=False)
    agreement_bf16, flipped_gaps = agreement_with_harness(scores_bf16, texts_bf16,
                                                          decision_only=True)
    items = len(run.items)
    benchmark.extra_info.update({
        "items": items, "tokens": tokens, "editgate_s": ours_s, "lm_eval_s": lm_s,
        "editgate_items_per_s": items / ours_s, "lm_eval_items_per_s": items / lm_s,
        "editgate_tokens_per_s": tokens / ours_s, "lm_eval_tokens_per_s": tokens / lm_s,
        "speedup": lm_s / ours_s, "agreement": agreement, "dtype": str(lm.dtype),
        "editgate_bf16_s": bf16_s, "speedup_bf16": lm_s / bf16_s,
        "decision_agreement_bf16": agreement_bf16, "bf16_flipped_gaps": flipped_gaps})
    print(f"\n| {name} | {items} | {tokens} | {items / ours_s:.2f} | {tokens / ours_s:.0f} | "
          f"{items / lm_s:.2f} | {tokens / lm_s:.0f} | {lm_s / ours_s:.2f}x | {agreement:.3f} | "
          f"{items / bf16_s:.2f} | {lm_s / bf16_s:.2f}x | {agreement_bf16:.3f} |"
          + (f" bf16 flips at fp32 gaps {', '.join(f'{g:.3f}' for g in flipped_gaps)}"
             if flipped_gaps else ""))
    assert agreement >= 0.99, f"{name}: per-item agreement with lm-evaluation-harness {agreement:.3f}"
