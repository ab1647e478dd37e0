"""The abilities' metric functions on hand-made cases, edge cases included."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editgate.abilities.base import ItemResult
from editgate.abilities.metrics import (
    entity_counts,
    exact_match,
    extract_answer,
    f1_from_counts,
    format_entities,
    gold_rank,
    gsm8k_gold,
    gsm8k_rationale,
    iob2_entities,
    lcs_length,
    normalize_answer,
    parse_entities,
    reciprocal_rank,
    rouge,
)
from editgate.gate import aggregate, aggregate_ci, paired_gate

# ----------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(("text", "value"), [
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", 18),
    ("The answer is $1,234.", 1234),
    ("So she has 5 left.\n#### 5", 5),
    ("It costs 0.5 dollars, so 3 cost 1.50", Fraction(3, 2)),
    ("The answer is -7 degrees", -7),
    ("First 12, then 30. The answer is: 42. Then 99 more words", 42),  # the marked answer wins
    ("no digits here", None),
    ("", None),
])
def test_extract_answer(text, value):
    assert extract_answer(text) == (None if value is None else Fraction(value))


def test_gsm8k_gold_and_rationale_strip_calculator_notes():
    answer = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"
    assert gsm8k_gold(answer) == 1018
    assert gsm8k_rationale(answer) == ("She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n"
                                       "The answer is 1,018.")
    assert extract_answer(gsm8k_rationale(answer)) == gsm8k_gold(answer)


def test_numeric_comparison_ignores_formatting():
    assert extract_answer("The answer is 18.00") == extract_answer("The answer is 18")
    assert extract_answer("The answer is 1,000") == gsm8k_gold("#### 1000")


# ----------------------------------------------------------------------------- open QA


def test_normalize_answer():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("an Apple, a day") == "apple day"
    assert normalize_answer("") == ""


def test_exact_match_any_alias_and_empty_prediction():
    aliases = ["Wilhelm Conrad Röntgen", "Röntgen"]
    assert exact_match("röntgen.", aliases) == 1.0
    assert exact_match("The Wilhelm Conrad Röntgen", aliases) == 1.0
    assert exact_match("Einstein", aliases) == 0.0
    assert exact_match("", aliases) == 0.0
    assert exact_match("the", ["a"]) == 0.0  # both normalise to empty: no credit


# ----------------------------------------------------------------------------- ROUGE


def test_rouge_hand_computed():
    scores = rouge("the cat sat on the mat", "the cat lay on the mat")
    # unigrams: 5 of 6 overlap both ways; bigrams: 3 of 5 ("the cat", "on the", "the mat")
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)


def test_rouge_edge_cases():
    assert rouge("", "a reference") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge("word", "") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge("Hello, World!", "hello world")["rouge1"] == 1.0  # case and punctuation
    assert rouge("one", "one")["rouge2"] == 0.0  # no bigram to match


def test_lcs():
    assert lcs_length("abcbdab", "bdcaba") == 4
    assert lcs_length([], ["a"]) == 0


words = st.lists(st.sampled_from(["the", "cat", "sat", "mat", "on", "a", "dog", "42", "Cat!"]),
                 max_size=20).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(prediction=words, reference=words)
def test_rouge_matches_rouge_score(prediction, reference):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    expected = {k: v.fmeasure for k, v in scorer.score(reference, prediction).items()}
    assert rouge(prediction, reference) == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- NER


def test_iob2_entities():
    tokens = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "Peter",
              "Blackburn"]
    tags = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "B-PER", "I-PER"]
    assert iob2_entities(tokens, tags) == [("EU", "ORG"), ("German", "MISC"), ("British", "MISC"),
                                           ("Peter Blackburn", "PER")]
    assert iob2_entities(["a", "b"], ["O", "O"]) == []
    # A type switch inside a run starts a new entity; so does a stray I- tag.
    assert iob2_entities(["A", "B", "C"], ["B-LOC", "I-PER", "I-PER"]) == [("A", "LOC"), ("B C", "PER")]


def test_entity_list_round_trip_and_garbage():
    entities = [("EU", "ORG"), ("Peter Blackburn", "PER")]
    assert parse_entities(format_entities(entities)) == entities
    assert format_entities([]) == "none"
    assert parse_entities("none") == []
    assert parse_entities("") == []
    assert parse_entities("EU (org);  junk ; (PER); Bonn  (LOC)") == [("EU", "ORG"), ("Bonn", "LOC")]


def test_entity_f1_exact_span_and_type():
    gold = [("EU", "ORG"), ("German", "MISC"), ("Peter Blackburn", "PER")]
    predicted = [("EU", "ORG"), ("German", "LOC"), ("Peter", "PER"), ("Bonn", "LOC")]
    tp, fp, fn = entity_counts(predicted, gold)
    assert (tp, fp, fn) == (1, 3, 2)  # wrong type and partial span both miss
    assert f1_from_counts(tp, fp, fn) == pytest.approx(2 / 7)
    assert entity_counts([("EU", "ORG")] * 2, [("EU", "ORG")]) == (1, 1, 0)  # multiset


def test_entity_f1_no_entities():
    assert f1_from_counts(*entity_counts([], [])) == 1.0  # nothing to find, nothing found
    assert f1_from_counts(*entity_counts([("X", "PER")], [])) == 0.0
    assert f1_from_counts(*entity_counts([], [("X", "PER")])) == 0.0


def _ner(counts):
    return [ItemResult(str(i), "", "", {"f1": f1_from_counts(*c), "f1.tp": c[0], "f1.fp": c[1],
                                        "f1.fn": c[2]}) for i, c in enumerate(counts)]


def test_micro_f1_aggregates_counts_not_item_means():
    results = _ner([(9, 1, 0), (0, 0, 0), (0, 0, 10)])
    # micro: 2·9 / (2·9 + 1 + 10) = 18/29, whereas the mean of per-item F1s would be 0.65.
    assert aggregate(results, "f1") == pytest.approx(18 / 29)
    low, high = aggregate_ci(results, "f1")
    assert low <= 18 / 29 <= high
    assert aggregate([ItemResult("0", "", "", {"accuracy": 1.0}),
                      ItemResult("1", "", "", {"accuracy": 0.0})], "accuracy") == 0.5


def test_micro_f1_gate():
    base = _ner([(2, 0, 0)] * 30)
    assert paired_gate("ner", "f1", base, base, 0.0).passed
    broken = _ner([(0, 2, 2)] * 15 + [(2, 0, 0)] * 15)
    result = paired_gate("ner", "f1", base, broken, 0.05)
    assert not result.passed
    assert result.baseline == 1.0 and result.edited == pytest.approx(0.5)


# ----------------------------------------------------------------------------- ranking


def test_rank_and_mrr():
    assert gold_rank([-1.0, -3.0, -2.0, -4.0], 0) == 1
    assert gold_rank([-1.0, -3.0, -2.0, -4.0], 3) == 4
    assert reciprocal_rank([-1.0, -3.0, -2.0, -4.0], 2) == 0.5
    assert gold_rank([0.0, 0.0, 0.0, 0.0], 2) == 4  # ties count against the gold
    assert gold_rank([float("nan"), 0.0], 1) == 2
