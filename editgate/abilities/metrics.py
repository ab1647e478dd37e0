"""Pure metric functions of the abilities: answer extraction, normalisation, ROUGE, entity F1, ranks.

No model, no runner: strings and numbers in, numbers out, so every edge case is unit-tested in
``tests/test_metrics.py``.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from fractions import Fraction

# ----------------------------------------------------------------------------- GSM8K numbers

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"
_ANSWER_IS = re.compile(rf"answer is[:\s]*\**\s*({_NUMBER})", re.IGNORECASE)
_HASHES = re.compile(rf"####\s*({_NUMBER})")
_ANY_NUMBER = re.compile(_NUMBER)


def parse_number(text: str) -> Fraction | None:
    """'1,234.50', '$18', '-3' → exact value; anything else → None."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str) -> Fraction | None:
    """The final numeric answer of a chain of thought.

    "The answer is X" (the form the prompt asks for) wins, then GSM8K's own "#### X", then the
    last number in the text — a model that ignores the format still gets credit for its number.
    """
    for pattern in (_ANSWER_IS, _HASHES):
        found = pattern.findall(text)
        if found:
            return parse_number(found[-1])
    numbers = _ANY_NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def gsm8k_gold(answer: str) -> Fraction:
    """The gold number after GSM8K's '#### ' marker."""
    value = parse_number(answer.rsplit("####", 1)[-1].strip())
    if value is None:
        raise ValueError(f"no final answer in {answer!r:.80}")
    return value


def gsm8k_rationale(answer: str) -> str:
    """GSM8K's worked solution without its calculator annotations, ending 'The answer is X.'."""
    body, _, final = answer.rpartition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is {final.strip()}."


# ----------------------------------------------------------------------------- open QA

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD / NQ-open normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, aliases: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold alias (empty never matches)."""
    predicted = normalize_answer(prediction)
    return float(bool(predicted) and any(predicted == normalize_answer(a) for a in aliases))


# ----------------------------------------------------------------------------- ROUGE

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenizer (no stemming): lower case, runs of [a-z0-9] are tokens."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _f1(overlap: int, predicted: int, reference: int) -> float:
    if overlap == 0 or predicted == 0 or reference == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F1 over token lists: clipped n-gram overlap."""
    grams = lambda tokens: Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    pred, ref = grams(prediction), grams(reference)
    return _f1(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], (diagonal + 1 if x == y else max(row[j], row[j - 1]))
    return row[-1]


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """Sentence-level ROUGE-L F1 (rouge_score's 'rougeL')."""
    return _f1(lcs_length(prediction, reference), len(prediction), len(reference))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1, matching ``rouge_score.RougeScorer(['rouge1','rouge2','rougeL'])``."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return {"rouge1": rouge_n(pred, ref, 1), "rouge2": rouge_n(pred, ref, 2),
            "rougeL": rouge_l(pred, ref)}


# ----------------------------------------------------------------------------- NER

ENTITY_TYPES = ("PER", "LOC", "ORG", "MISC")
_ENTITY = re.compile(r"^\s*(.*?)\s*\(\s*(PER|LOC|ORG|MISC)\s*\)\s*$", re.IGNORECASE)

Entity = tuple[str, str]  # (surface text, type)


def iob2_entities(tokens: Sequence[str], tags: Sequence[str]) -> list[Entity]:
    """Entity spans of an IOB2-tagged sentence as (text, type); a stray I- starts a new entity."""
    entities: list[Entity] = []
    words: list[str] = []
    kind = ""
    for token, tag in [*zip(tokens, tags), ("", "O")]:
        prefix, _, label = tag.partition("-")
        if words and (prefix != "I" or label != kind):
            entities.append((" ".join(words), kind))
            words = []
        if prefix in ("B", "I"):
            if not words:
                kind = label
            words.append(token)
    return entities


def format_entities(entities: Sequence[Entity]) -> str:
    """The list form the prompt teaches: 'EU (ORG); German (MISC)', or 'none'."""
    return "; ".join(f"{text} ({kind})" for text, kind in entities) or "none"


def parse_entities(text: str) -> list[Entity]:
    """Read a generated list back; pieces not of the form 'text (TYPE)' are ignored."""
    entities = []
    for piece in text.split(";"):
        found = _ENTITY.match(piece)
        if found and found.group(1):
            entities.append((" ".join(found.group(1).split()), found.group(2).upper()))
    return entities


def entity_counts(predicted: Sequence[Entity], gold: Sequence[Entity]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): exact text and type, as multisets."""
    pred, ref = Counter(predicted), Counter(gold)
    tp = sum((pred & ref).values())
    return tp, sum(pred.values()) - tp, sum(ref.values()) - tp


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """Entity F1 = 2TP / (2TP + FP + FN); nothing predicted and nothing to find counts as 1."""
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2 * tp / denominator


# ----------------------------------------------------------------------------- ranking


def gold_rank(scores: Sequence[float], gold: int) -> int:
    """1-based rank of the gold candidate; ties count against it (a constant scorer ranks last)."""
    if not all(map(math.isfinite, scores)):
        return len(scores)
    return 1 + sum(1 for i, s in enumerate(scores) if i != gold and s >= scores[gold])


def reciprocal_rank(scores: Sequence[float], gold: int) -> float:
    return 1.0 / gold_rank(scores, gold)
