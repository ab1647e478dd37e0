"""Sentiment: SST-2 (GLUE dev), binary classification by choice log-likelihood.

Paper metric: accuracy. Continuous metric: log P(gold label) − log P(other label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from editgate.abilities.base import Ability, Item, ItemResult, Metric, PromptStyle, margin, wrap
from editgate.data import DatasetSpec, Field, HubSource
from editgate.runner import Choices

LABELS = ("negative", "positive")


class Sentiment(Ability):
    name = "sentiment"
    title = "Sentiment (SST-2)"
    dataset = DatasetSpec(
        folder="sst2", filename="validation.jsonl",
        schema=(Field("idx", int), Field("sentence", str, nonempty=True), Field("label", int)),
        hub=HubSource("nyu-mll/glue", "validation", name="sst2"),
    )
    metrics = (
        Metric("accuracy", "paper", chance=0.5),
        Metric("margin", "continuous", unit="nats"),
    )

    @staticmethod
    def _example(item: Item) -> str:
        return f"Review: {item['sentence'].strip()}\nSentiment:"

    def choose_shots(self, pool: Sequence[Item], k: int) -> list[Item]:
        """Alternate labels so a k-shot prompt is balanced and does not end on a streak."""
        by_label = [[i for i in pool if i["label"] == label] for label in (1, 0)]
        shots = [by_label[n % 2][n // 2] for n in range(k)]
        return shots

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm,
                 generation: bool) -> dict:
        prefix = "".join(f"{self._example(s)} {LABELS[s['label']]}\n\n" for s in shots)
        prefix, context = wrap(lm, style, prefix, self._example(item))
        space = "" if style.chat else " "
        return {"label": Choices(context, tuple(space + label for label in LABELS), prefix)}

    def score(self, item: Item, outputs: Mapping) -> ItemResult:
        scores = outputs["label"]
        gold = int(item["label"])
        predicted = max(range(len(LABELS)), key=lambda i: scores.logprobs[i])
        return ItemResult(item.id, LABELS[predicted], LABELS[gold], {
            "accuracy": float(predicted == gold),
            "margin": margin(scores, gold),
        })
