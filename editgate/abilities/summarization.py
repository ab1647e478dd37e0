"""Summarization: SAMSum (validation), a one-sentence summary of a chat dialogue.

Paper metrics: ROUGE-1/2/L F1 of the greedy summary against the reference, computed by
:func:`editgate.abilities.metrics.rouge` (rouge_score's tokenisation, no stemming; checked against
the ``rouge_score`` package in the tests). Continuous metric: mean per-token log-prob of the
reference summary.
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
    mean_logprob,
    prompt,
)
from editgate.abilities.metrics import rouge
from editgate.data import DatasetSpec, Field, HubSource
from editgate.models import LoadedModel
from editgate.runner import Choices, Generate


class Summarization(Ability):
    name = "summarization"
    title = "Summarization (SAMSum)"
    dataset = DatasetSpec(
        folder="samsum", filename="validation.jsonl",
        schema=(Field("id", str), Field("dialogue", str, nonempty=True),
                Field("summary", str, nonempty=True)),
        hub=HubSource("knkarthick/samsum", "validation"),
    )
    metrics = (
        Metric("rouge1", "paper", generation=True),
        Metric("rouge2", "paper", generation=True),
        Metric("rougeL", "paper", generation=True),
        Metric("summary_logprob", "continuous", unit="nats"),
    )
    shot_pool_size = 8
    max_new_tokens = 64

    @staticmethod
    def _dialogue(item: Item) -> str:
        lines = [line.strip() for line in item["dialogue"].splitlines() if line.strip()]
        return "Dialogue:\n" + "\n".join(lines) + "\nSummary:"

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        space = "" if style.chat else " "
        pairs = [(self._dialogue(s), space + " ".join(s["summary"].split())) for s in shots]
        instruction = style.options.get("instruction", "Summarize each dialogue in one sentence.\n\n")
        prefix, context = prompt(lm, style, pairs, self._dialogue(item), instruction=instruction)
        reference = space + " ".join(item["summary"].split())
        requests: dict[str, Request] = {"reference": Choices(context, (reference,), prefix)}
        if generation:
            requests["summary"] = Generate(context, stop=("\n",), max_new_tokens=self.max_new_tokens,
                                           prefix=prefix)
        return requests

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        metrics = {"summary_logprob": mean_logprob(outputs["reference"])}
        prediction = ""
        if "summary" in outputs:
            prediction = outputs["summary"].strip()
            metrics.update(rouge(prediction, item["summary"]))
        return ItemResult(item.id, prediction, item["summary"].strip(), metrics)
