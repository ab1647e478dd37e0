"""Extra: PIQA (validation), the physically sensible of two solutions to a goal.

Accuracy by choice log-likelihood; continuous metric: the gold solution's margin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from editgate.abilities.base import (
    Ability,
    Item,
    ItemResult,
    Metric,
    Output,
    PromptStyle,
    Request,
    choice_result,
)
from editgate.data import DatasetSpec, Field
from editgate.models import LoadedModel
from editgate.runner import Choices


class PIQA(Ability):
    name = "piqa"
    title = "Extra: PIQA"
    dataset = DatasetSpec(
        folder="piqa", filename="validation.jsonl",
        schema=(Field("idx", int), Field("query", str, nonempty=True),
                Field("choices", list, nonempty=True), Field("gold", int)),
    )
    metrics = (Metric("accuracy", "paper", chance=0.5),
               Metric("margin", "continuous", unit="nats"))

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        context = item["query"].strip() + "\nAnswer:"
        return {"solutions": Choices(context, tuple(" " + c.strip() for c in item["choices"]))}

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        values = outputs["solutions"].logprobs
        return choice_result(item.id, values, int(item["gold"]))
