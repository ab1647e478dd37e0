"""Natural language inference: RTE (GLUE train, as the paper used), entailment or not.

Paper metric: accuracy over {entailment, not_entailment} by choice log-likelihood, with the GLUE
"True or False?" question form. Continuous metric: the gold-label log-prob margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from editgate.abilities.base import Classification, Item
from editgate.data import DatasetSpec, Field, HubSource


class NLI(Classification):
    name = "nli"
    title = "NLI (RTE)"
    dataset = DatasetSpec(
        folder="rte", filename="train.jsonl",
        schema=(Field("idx", int), Field("sentence1", str, nonempty=True),
                Field("sentence2", str, nonempty=True), Field("label", str)),
        hub=HubSource("nyu-mll/glue", "train", name="rte", convert=lambda row: {
            **row, "label": ("entailment", "not_entailment")[row["label"]]}),
    )
    labels = ("True", "False")  # entailment, not_entailment

    def example(self, item: Mapping[str, Any] | Item) -> str:
        return (f"{item['sentence1'].strip()}\nQuestion: {item['sentence2'].strip()} "
                "True or False?\nAnswer:")

    def gold(self, item: Item) -> int:
        return 0 if item["label"] == "entailment" else 1

    def content_free(self) -> str:
        return self.example({"sentence1": "N/A", "sentence2": "N/A"})
