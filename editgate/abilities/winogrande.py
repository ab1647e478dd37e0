"""Extra: WinoGrande (dev), pronoun resolution by partial scoring.

The blank is filled with each option in turn and the *rest of the sentence* is scored after each
filled-in context (two contexts, one continuation): accuracy, and the gold option's margin.
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


class WinoGrande(Ability):
    name = "winogrande"
    title = "Extra: WinoGrande"
    dataset = DatasetSpec(
        folder="winogrande", filename="dev_xl.jsonl",
        schema=(Field("idx", int), Field("context_options", list, nonempty=True),
                Field("continuation", str, nonempty=True), Field("gold", int)),
    )
    metrics = (Metric("accuracy", "paper", chance=0.5),
               Metric("margin", "continuous", unit="nats"))

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        rest = " " + item["continuation"].strip()
        return {f"option{n}": Choices(context.strip(), (rest,))
                for n, context in enumerate(item["context_options"])}

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        values = [outputs[f"option{n}"].logprobs[0] for n in range(len(item["context_options"]))]
        return choice_result(item.id, values, int(item["gold"]))
