"""Did the edit take? CounterFact's efficacy, paraphrase and neighborhood scores.

For a prompt p and two candidate objects, "A beats B" means the mean per-token log-probability of
A after p is higher than B's (ROME's convention, so multi-token objects are not penalised):

* efficacy:     target_new beats target_true on the edit prompt itself;
* paraphrase:   target_new beats target_true on the paraphrase prompts;
* neighborhood: the neighbor's true answer still beats target_new on the neighborhood prompts
                (other subjects with the same relation must keep their facts).

Each score is the fraction of (request, prompt) pairs that pass; the per-pair outcomes are kept,
like ability items, so the report can show which facts failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from editgate.abilities.base import ItemResult
from editgate.edits import EditRequest
from editgate.runner import AbilityRunner, Choices

SUCCESS_METRICS = ("efficacy", "paraphrase", "neighborhood")


@dataclass(frozen=True)
class _Probe:
    metric: str
    request: EditRequest
    prompt: str
    wanted: str  # the continuation that should win
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
                 ) -> dict[str, list[ItemResult]]:
    """Per-metric, per-probe outcomes (metric value 1.0 = the wanted object wins)."""
    probes = _probes(requests)
    scores = runner.loglikelihood([Choices(p.prompt, (p.wanted, p.other)) for p in probes])
    results: dict[str, list[ItemResult]] = {name: [] for name in SUCCESS_METRICS}
    for index, (probe, score) in enumerate(zip(probes, scores)):
        wanted, other = score.mean_logprobs
        results[probe.metric].append(ItemResult(
            item_id=f"{probe.request.case_id}/{probe.metric}/{index}",
            prediction=probe.wanted if wanted > other else probe.other,
            gold=probe.wanted,
            metrics={"success": float(wanted > other), "margin": wanted - other},
        ))
    return results


def success_rate(results: Sequence[ItemResult]) -> float:
    return sum(r.metrics["success"] for r in results) / len(results) if results else float("nan")
