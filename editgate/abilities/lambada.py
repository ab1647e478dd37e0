"""Extra: LAMBADA (OpenAI test, first 2000), the last word of a passage that needs its context.

Accuracy: the target word is the greedy continuation, token by token. Continuous metric: its
log-probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from editgate.abilities.base import Ability, Item, ItemResult, Metric, Output, PromptStyle, Request
from editgate.data import DatasetSpec, Field
from editgate.models import LoadedModel
from editgate.runner import Choices


class Lambada(Ability):
    name = "lambada"
    title = "Extra: LAMBADA"
    dataset = DatasetSpec(
        folder="lambada", filename="test_openai_first2000.jsonl",
        schema=(Field("idx", int), Field("context", str, nonempty=True),
                Field("continuation", str, nonempty=True)),
    )
    metrics = (Metric("accuracy", "paper"), Metric("word_logprob", "continuous", unit="nats"))

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        return {"word": Choices(item["context"].rstrip(), (" " + item["continuation"].strip(),))}

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        scores = outputs["word"]
        return ItemResult(item.id, "greedy" if scores.is_greedy[0] else "not greedy",
                          item["continuation"], {"accuracy": float(scores.is_greedy[0]),
                                                 "word_logprob": scores.logprobs[0]})
