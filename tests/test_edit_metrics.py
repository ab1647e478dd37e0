"""Edit metrics on hand-made cases: ROME's ES/PS/NS beside EasyEdit's token-level accuracies.

The model is replaced by a stub whose teacher-forced argmax tokens and choice log-probabilities are
written down by hand, so every expected rate below can be checked on paper.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import editgate.edit_success as es
from editgate.data import Record
from editgate.edit_success import (
    EDIT_METRICS,
    SUCCESS_METRICS,
    TOKEN_METRICS,
    edit_success,
    locality_reference,
    optional_threshold,
    success_rate,
    token_agreement,
)
from editgate.edits import EditRequest, _zsre_request
from editgate.errors import ConfigError
from editgate.gate import Tolerances
from editgate.runner import ChoiceScores

CF = EditRequest("cf-1", "The mother tongue of Danielle Darrieux is", "Danielle Darrieux",
                 " English", " French", ("Danielle Darrieux speaks",),
                 ("Michel Rocard speaks",), " French")


class StubRunner:
    """``argmax[(prompt, answer)]`` = (predicted ids, answer ids); ``margins[prompt]`` = mean
    log P(wanted) − mean log P(other) for the probability comparisons."""

    def __init__(self, argmax: dict, margins: dict[str, float]) -> None:
        self.argmax, self.margins = argmax, margins
        self.lm = SimpleNamespace(tokenizer=SimpleNamespace(decode=lambda ids: str(list(ids))))

    def loglikelihood(self, requests):
        return [ChoiceScores((self.margins[r.context], 0.0), (1, 1), (False, False))
                for r in requests]


@pytest.fixture
def stub(monkeypatch):
    def make(argmax: dict, margins: dict[str, float]) -> StubRunner:
        runner = StubRunner(argmax, margins)
        monkeypatch.setattr(es, "argmax_tokens", lambda r, prompt, answer: r.argmax[prompt, answer])
        return runner
    return make


def test_token_agreement():
    assert token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_agreement([1, 9, 3, 9], [1, 2, 3, 4]) == 0.5
    assert token_agreement([7], [8]) == 0.0
    with pytest.raises(ValueError):
        token_agreement([1, 2], [1])
    with pytest.raises(ValueError):
        token_agreement([], [])


def test_counterfact_reports_both_conventions(stub):
    argmax = {
        (CF.prompt, " English"): ([11, 12, 99], [11, 12, 13]),  # 2 of 3 target tokens
        ("Danielle Darrieux speaks", " English"): ([11, 12, 13], [11, 12, 13]),
        ("Michel Rocard speaks", " French"): ([21, 22], [21, 23]),  # unedited: [21, 23]
    }
    runner = stub(argmax, {CF.prompt: 0.5, "Danielle Darrieux speaks": -0.1,
                           "Michel Rocard speaks": 2.0})
    reference = {("cf-1", "Michel Rocard speaks"): [21, 23]}
    results = edit_success(runner, [CF], reference)
    assert set(results) == set(EDIT_METRICS)
    rates = {metric: success_rate(items) for metric, items in results.items()}
    # ROME's: new beats true on the prompt (margin 0.5 > 0), not on the paraphrase (−0.1);
    # the neighbour's answer still beats the new target (2.0).
    assert (rates["efficacy"], rates["paraphrase"], rates["neighborhood"]) == (1.0, 0.0, 1.0)
    # EasyEdit's: token accuracy 2/3 on the prompt, 3/3 on the paraphrase; locality 1 of 2
    # answer positions still predicted as before the edit.
    assert rates["rewrite_acc"] == pytest.approx(2 / 3)
    assert rates["rephrase_acc"] == 1.0
    assert rates["locality"] == 0.5


def test_locality_needs_the_unedited_tokens(stub):
    argmax = {(CF.prompt, " English"): ([1], [1]), ("Danielle Darrieux speaks", " English"): ([1], [1]),
              ("Michel Rocard speaks", " French"): ([5], [5])}
    runner = stub(argmax, {CF.prompt: 1.0, "Danielle Darrieux speaks": 1.0,
                           "Michel Rocard speaks": 1.0})
    results = edit_success(runner, [CF])
    assert results["locality"] == []  # not scored without the reference, never guessed
    assert len(results["rewrite_acc"]) == 1
    assert locality_reference(runner, [CF]) == {("cf-1", "Michel Rocard speaks"): [5]}


def test_zsre_locality_prompt_is_verbatim_and_metrics_coincide(stub):
    record = Record({"subject": "IAAF Combined Events Challenge",
                     "src": "When was the inception of IAAF Combined Events Challenge?",
                     "alt": "2006", "answers": ["1998"],
                     "rephrase": "When was the IAAF Combined Events Challenge launched?",
                     "loc": "nq question: what is the name of the last episode of spongebob",
                     "loc_ans": "The String"}, "zsre.jsonl", 1)
    request = _zsre_request(record)
    assert request.neighborhood_prompts == (
        "nq question: what is the name of the last episode of spongebob",)  # no "?" added
    argmax = {(request.prompt, " 2006"): ([1, 2], [1, 3]),
              (request.paraphrase_prompts[0], " 2006"): ([1, 3], [1, 3]),
              (request.neighborhood_prompts[0], " The String"): ([4, 5], [4, 5])}
    runner = stub(argmax, {})
    reference = {(request.case_id, request.neighborhood_prompts[0]): [4, 6]}
    rates = {m: success_rate(items) for m, items in edit_success(runner, [request], reference).items()}
    # zsRE scores efficacy/paraphrase/neighborhood the EasyEdit way: the same numbers.
    assert rates["efficacy"] == rates["rewrite_acc"] == 0.5
    assert rates["paraphrase"] == rates["rephrase_acc"] == 1.0
    assert rates["neighborhood"] == rates["locality"] == 0.5


def test_token_metrics_are_gated_only_when_configured():
    table = {"edit_success": {"efficacy": 0.8, "paraphrase": 0.5, "neighborhood": 0.5,
                              "zsre": {"locality": 0.9}}}
    tolerances = Tolerances(table)
    assert optional_threshold(tolerances, "efficacy") == 0.8
    for metric in TOKEN_METRICS:
        assert optional_threshold(tolerances, metric) is None  # report-only
    assert optional_threshold(tolerances, "locality", "zsre") == 0.9
    with_override = Tolerances(table, {"edit_success.rewrite_acc": 0.7})
    assert optional_threshold(with_override, "rewrite_acc") == 0.7
    with pytest.raises(ConfigError):  # the ES/PS/NS gates stay mandatory
        optional_threshold(Tolerances({"edit_success": {}}), SUCCESS_METRICS[0])
