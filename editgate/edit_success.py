"""Did the edit take? ROME's probability comparisons and EasyEdit's token-level accuracies.

Two conventions are in use in the literature; editgate reports both, under different names, so a
number can be set beside the table it is compared with.

ROME's (CounterFact), the gated metrics ``SUCCESS_METRICS``. For a prompt and two candidate
objects, "A beats B" means A's mean per-token log-probability is higher (so multi-token objects
are not penalised):

* efficacy:     target_new beats target_true on the edit prompt itself (ROME's ES);
* paraphrase:   target_new beats target_true on the paraphrase prompts (PS);
* neighborhood: the neighbor's true answer still beats target_new on the neighborhood prompts
                (NS: other subjects with the same relation must keep their facts).

For zsRE these three are scored the MEND/EasyEdit way (token accuracy and locality, below).

EasyEdit's (its CounterFact and zsRE tables; ``easyeditor/evaluate``), ``TOKEN_METRICS``:

* rewrite_acc:  teacher-forced token accuracy of target_new on the edit prompt — the fraction of
                its tokens that are the model's argmax given the prompt and the preceding target
                tokens;
* rephrase_acc: the same on the paraphrase prompts;
* locality:     on each neighborhood prompt followed by its own answer, the fraction of answer
                positions whose argmax token is unchanged from the unedited model (``reference``,
                computed before the first edit). zsRE's locality prompts are used verbatim
                ("nq question: …").

Each probe yields a ``success`` value in [0, 1]; a metric's rate is their mean. Per-probe outcomes
are kept, like ability items, so the report can show which facts failed. The token metrics are
reported always and gated only where a threshold is configured (:func:`optional_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from editgate.abilities.base import ItemResult
from editgate.edits import EditRequest
from editgate.errors import ConfigError
from editgate.runner import AbilityRunner, Choices

SUCCESS_METRICS = ("efficacy", "paraphrase", "neighborhood")  # gated (a threshold is required)
TOKEN_METRICS = ("rewrite_acc", "rephrase_acc", "locality")  # EasyEdit's; gated if configured
EDIT_METRICS = SUCCESS_METRICS + TOKEN_METRICS


@dataclass(frozen=True)
class _Probe:
    metric: str
    request: EditRequest
    prompt: str
    wanted: str  # the continuation that should win (or be predicted token by token)
    other: str
    score: str  # "compare" (A beats B) | "accuracy" (argmax = wanted) | "agreement" (= unedited)


def _probes(requests: Sequence[EditRequest]) -> list[_Probe]:
    probes = []
    for r in requests:
        zsre = r.kind == "zsre"
        accuracy = "accuracy" if zsre else "compare"
        probes.append(_Probe("efficacy", r, r.prompt, r.target_new, r.target_true, accuracy))
        probes.extend(_Probe("paraphrase", r, p, r.target_new, r.target_true, accuracy)
                      for p in r.paraphrase_prompts)
        answer = r.neighborhood_answer or r.target_true
        if zsre:
            probes.extend(_Probe("neighborhood", r, p, answer, r.target_new, "agreement")
                          for p in r.neighborhood_prompts)
        elif answer.strip() != r.target_new.strip():
            probes.extend(_Probe("neighborhood", r, p, answer, r.target_new, "compare")
                          for p in r.neighborhood_prompts)
        probes.append(_Probe("rewrite_acc", r, r.prompt, r.target_new, r.target_true, "accuracy"))
        probes.extend(_Probe("rephrase_acc", r, p, r.target_new, r.target_true, "accuracy")
                      for p in r.paraphrase_prompts)
        probes.extend(_Probe("locality", r, p, answer, r.target_new, "agreement")
                      for p in r.neighborhood_prompts)
    return probes


def edit_success(runner: AbilityRunner, requests: Sequence[EditRequest],
                 reference: dict[tuple[str, str], list[int]] | None = None,
                 ) -> dict[str, list[ItemResult]]:
    """Per-metric, per-probe outcomes on the model as it is now (every name in EDIT_METRICS).

    ``reference`` holds the unedited model's argmax tokens of the locality probes
    (:func:`locality_reference`); without it those probes (zsRE's neighborhood, every locality)
    are not scored.
    """
    probes = _probes(requests)
    compared = [p for p in probes if p.score == "compare"]
    outcomes: dict[int, ItemResult] = {}
    if compared:
        scores = runner.loglikelihood([Choices(p.prompt, (p.wanted, p.other)) for p in compared])
        for probe, score in zip(compared, scores):
            wanted, other = score.mean_logprobs
            outcomes[id(probe)] = ItemResult(
                "", probe.wanted if wanted > other else probe.other, probe.wanted,
                {"success": float(wanted > other), "margin": wanted - other})
    argmax: dict[tuple[str, str], tuple[list[int], list[int]]] = {}  # one forward per text
    for probe in probes:
        if probe.score == "compare":
            continue
        if (probe.prompt, probe.wanted) not in argmax:
            argmax[probe.prompt, probe.wanted] = argmax_tokens(runner, probe.prompt, probe.wanted)
        predicted, target = argmax[probe.prompt, probe.wanted]
        text = runner.lm.tokenizer.decode(predicted)
        if probe.score == "agreement":
            before = (reference or {}).get((probe.request.case_id, probe.prompt))
            if before is None:
                continue
            kept = token_agreement(predicted, before)
            outcomes[id(probe)] = ItemResult("", text, runner.lm.tokenizer.decode(before),
                                             {"success": kept, "margin": kept})
        else:
            accuracy = token_agreement(predicted, target)
            outcomes[id(probe)] = ItemResult("", text, probe.wanted,
                                             {"success": accuracy, "margin": accuracy})
    results: dict[str, list[ItemResult]] = {name: [] for name in EDIT_METRICS}
    for index, probe in enumerate(probes):
        outcome = outcomes.get(id(probe))
        if outcome is None:
            continue
        results[probe.metric].append(ItemResult(
            f"{probe.request.case_id}/{probe.metric}/{index}", outcome.prediction, outcome.gold,
            outcome.metrics))
    return results


def locality_reference(runner: AbilityRunner, requests: Sequence[EditRequest],
                       ) -> dict[tuple[str, str], list[int]]:
    """The unedited model's argmax tokens on each locality probe (all sources)."""
    return {(p.request.case_id, p.prompt): argmax_tokens(runner, p.prompt, p.wanted)[0]
            for p in _probes(requests) if p.score == "agreement"}


def token_agreement(predicted: Sequence[int], wanted: Sequence[int]) -> float:
    """Fraction of positions where two token sequences agree (EasyEdit: np.mean(np.equal))."""
    if len(predicted) != len(wanted) or not wanted:
        raise ValueError(f"token sequences of different or zero length: {len(predicted)} vs "
                         f"{len(wanted)}")
    return sum(a == b for a, b in zip(predicted, wanted)) / len(wanted)


@torch.no_grad()
def argmax_tokens(runner: AbilityRunner, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Teacher-forced argmax token at each answer position after ``prompt``, and the answer ids."""
    lm = runner.lm
    context, target = lm.encode(prompt, bos=True), lm.encode(answer)
    ids = torch.tensor([context + target], device=lm.device)
    hidden = lm.decoder(input_ids=ids).last_hidden_state[0, len(context) - 1:-1]
    return lm.head_logits(hidden).argmax(-1).tolist(), target


def success_rate(results: Sequence[ItemResult]) -> float:
    return sum(r.metrics["success"] for r in results) / len(results) if results else float("nan")


def optional_threshold(tolerances: Any, metric: str, source: str = "counterfact") -> float | None:
    """The gate of ``metric``, or None where none is configured and the metric is report-only.

    ``SUCCESS_METRICS`` must have a threshold (an editor that changes nothing has to fail); the
    token metrics are gated only when ``[edit_success]`` (or ``--tolerance``) names them.
    """
    try:
        return tolerances.success_threshold(metric, source)
    except ConfigError:
        if metric in SUCCESS_METRICS:
            raise
        return None
