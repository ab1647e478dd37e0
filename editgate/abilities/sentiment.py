"""Sentiment: SST-2 (GLUE dev), binary classification by choice log-likelihood.

Paper metric: accuracy. Continuous metric: log P(gold label) − log P(other label).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from editgate.abilities.base import Classification, Item
from editgate.data import DatasetSpec, Field, HubSource


class Sentiment(Classification):
    name = "sentiment"
    title = "Sentiment (SST-2)"
    dataset = DatasetSpec(
        folder="sst2", filename="validation.jsonl",
        schema=(Field("idx", int), Field("sentence", str, nonempty=True), Field("label", int)),
        hub=HubSource("nyu-mll/glue", "validation", name="sst2"),
    )
    labels = ("negative", "positive")

    def example(self, item: Mapping[str, Any] | Item) -> str:
        return f"Review: {item['sentence'].strip()}\nSentiment:"

    def gold(self, item: Item) -> int:
        return int(item["label"])

    def content_free(self) -> str:
        return self.example({"sentence": "N/A"})
