"""Did the edit take? Efficacy, paraphrase and neighborhood, as CounterFact and zsRE define them.

CounterFact (ROME's convention). For a prompt and two candidate objects, "A beats B" means A's mean
per-token log-probability is higher (so multi-token objects are not penalised):

* efficacy:     target_new beats target_true on the edit prompt itself;
* paraphrase:   target_new beats target_true on the paraphrase prompts;
* neighborhood: the neighbor's true answer still beats target_new on the neighborhood prompts
                (other subjects with the same relation must keep their facts).

zsRE (MEND/EasyEdit convention): teacher-forced token accuracy — the fraction of answer tokens that
are the model's argmax given the question and the preceding answer tokens — of target_new on the
question (efficacy) and on its rephrasing (paraphrase); neighborhood is locality, the fraction of
the unrelated NQ question's answer positions whose argmax token is unchanged from the unedited
model (``reference``, computed before the first edit).

Each probe yields a ``success`` value in [0, 1]; a metric's rate is their mean. Per-probe outcomes
are kept, like ability items, so the report can show which facts failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editgate.abilities.base import ItemResult
from editgate.edits import EditRequest
from editgate.runner import AbilityRunner, Choices

SUCCESS_METRICS = ("efficacy", "paraphrase", "neighborhood")


@dataclass(frozen=True)
class _Probe:
    metric: str
    request: EditRequest
    prompt: str
    wanted: str  # the continuation that should win (or be predicted token by token)
    other: str


def _probes(requests: Sequence[EditRequest]) -> list[_Probe]:
    probes = []
    for r in requests:
        probes.append(_Probe("efficacy", r, r.prompt, r.target_new, r.target_true))
        probes.extend(_Probe("paraphrase", r, p, r.target_new, r.target_true)
                      for p in r.paraphrase_prompts)
        answer = r.neighborhood_answer or r.target_true
        if answer.strip() != r.target_new.strip():
            probes.extend(_Probe("neighborhood", r, p, answer, r.target_new)
                          for p in r.neighborhood_prompts)
    return probes


def edit_success(runner: AbilityRunner, requests: Sequence[EditRequest],
                 reference: dict[tuple[str, str], list[int]] | None = None,
                 ) -> dict[str, list[ItemResult]]:
    """Per-metric, per-probe outcomes on the model as it is now.

    ``reference`` holds the unedited model's argmax tokens of zsRE neighborhood probes
    (:func:`locality_reference`); without it zsRE neighborhood probes are not scored.
    """
    probes = _probes(requests)
    counterfact = [p for p in probes if p.request.kind != "zsre"]
    zsre = [p for p in probes if p.request.kind == "zsre"]
    outcomes: dict[int, ItemResult] = {}
    if counterfact:
        scores = runner.loglikelihood([Choices(p.prompt, (p.wanted, p.other)) for p in counterfact])
        for probe, score in zip(counterfact, scores):
            wanted, other = score.mean_logprobs
            outcomes[id(probe)] = ItemResult(
                "", probe.wanted if wanted > other else probe.other, probe.wanted,
                {"success": float(wanted > other), "margin": wanted - other})
    for probe in zsre:
        predicted, target = argmax_tokens(runner, probe.prompt, probe.wanted)
        text = runner.lm.tokenizer.decode(predicted)
        if probe.metric == "neighborhood":
            before = (reference or {}).get((probe.request.case_id, probe.prompt))
            if before is None:
                continue
            kept = sum(a == b for a, b in zip(predicted, before)) / len(before)
            outcomes[id(probe)] = ItemResult("", text, runner.lm.tokenizer.decode(before),
                                             {"success": kept, "margin": kept})
        else:
            accuracy = sum(a == b for a, b in zip(predicted, target)) / len(target)
            outcomes[id(probe)] = ItemResult("", text, probe.wanted,
                                             {"success": accuracy, "margin": accuracy})
    results: dict[str, list[ItemResult]] = {name: [] for name in SUCCESS_METRICS}
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
    """The unedited model's argmax tokens on each zsRE neighborhood probe."""
    return {(p.request.case_id, p.prompt): argmax_tokens(runner, p.prompt, p.wanted)[0]
            for p in _probes(requests) if p.request.kind == "zsre" and p.metric == "neighborhood"}


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
