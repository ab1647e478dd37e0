"""Extra: HellaSwag (1000 validation items), the most plausible ending of an activity description.

Accuracy by log-likelihood per character of each ending (lm-evaluation-harness's acc_norm);
continuous metric: the gold ending's margin in the same units.
"""

from __future__ import annotations

import re
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
from editgate.data import DatasetSpec, Field, Record
from editgate.models import LoadedModel
from editgate.runner import Choices


def clean(text: str) -> str:
    """WikiHow artefacts out, as in the HellaSwag reference preprocessing."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


class HellaSwag(Ability):
    name = "hellaswag"
    title = "Extra: HellaSwag"
    dataset = DatasetSpec(
        folder="hellaswag", filename="validation_subset1000.jsonl",
        schema=(Field("ind", int), Field("activity_label", str), Field("ctx_a", str),
                Field("ctx_b", str), Field("endings", list, nonempty=True), Field("label", int)),
    )
    metrics = (Metric("accuracy", "paper", chance=0.25),
               Metric("margin", "continuous", unit="nats"))

    def item_id(self, record: Record) -> str:
        return str(record["ind"])

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        context = clean(f"{item['activity_label']}: {item['ctx_a']} {item['ctx_b'].capitalize()}")
        return {"endings": Choices(context, tuple(" " + clean(e) for e in item["endings"]))}

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        scores = outputs["endings"]
        values = [lp / len(clean(e)) for lp, e in zip(scores.logprobs, item["endings"])]
        return choice_result(item.id, values, int(item["label"]))
