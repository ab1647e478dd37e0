"""Closed-domain QA: BoolQ (dev), a yes/no question answered from its Wikipedia passage.

Paper metric: accuracy by choice log-likelihood of " yes" / " no". BoolQ is 62 % "yes", so the
bar a gate needs to clear is the majority rate, not a coin. Continuous metric: gold margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from editgate.abilities.base import Classification, Item, Metric
from editgate.data import DatasetSpec, Field, HubSource


class ClosedQA(Classification):
    name = "closed_qa"
    title = "Closed-domain QA (BoolQ)"
    dataset = DatasetSpec(
        folder="boolq", filename="validation.jsonl",
        schema=(Field("question", str, nonempty=True), Field("passage", str, nonempty=True),
                Field("answer", bool)),
        hub=HubSource("google/boolq", "validation"),
    )
    metrics = (Metric("accuracy", "paper", chance=0.628),  # "yes" rate of the 2000 items here
               Metric("margin", "continuous", unit="nats"))
    shot_pool_size = 16
    labels = ("no", "yes")

    def example(self, item: Mapping[str, Any] | Item) -> str:
        question = item["question"].strip().rstrip("?")
        question = question[:1].upper() + question[1:]
        return f"{item['passage'].strip()}\nQuestion: {question}?\nAnswer:"

    def gold(self, item: Item) -> int:
        return int(item["answer"])

    def content_free(self) -> str:
        return self.example({"passage": "N/A", "question": "N/A"})
