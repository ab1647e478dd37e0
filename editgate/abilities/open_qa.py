"""Open-domain QA: NQ-open (test), a short factual answer from the model's own knowledge.

Paper metric: exact match of the greedy answer after SQuAD normalisation, against any gold
alias. Continuous metric: log P(best gold alias | question), all aliases scored on one context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from editgate.abilities.base import Ability, Item, ItemResult, Metric, Output, PromptStyle, Request, prompt
from editgate.abilities.metrics import exact_match
from editgate.data import DatasetSpec, Field, HubSource
from editgate.models import LoadedModel
from editgate.runner import Choices, Generate


class OpenQA(Ability):
    name = "open_qa"
    title = "Open-domain QA (NQ-open)"
    dataset = DatasetSpec(
        folder="nq_open", filename="test.jsonl",
        schema=(Field("question", str, nonempty=True), Field("answer", list, nonempty=True)),
        hub=HubSource("google-research-datasets/nq_open", "validation"),
    )
    metrics = (
        Metric("exact_match", "paper", generation=True),
        Metric("alias_logprob", "continuous", unit="nats"),
    )
    max_new_tokens = 24

    @staticmethod
    def _question(item: Item) -> str:
        question = item["question"].strip().rstrip("?")
        return f"Q: {question[:1].upper() + question[1:]}?\nA:"

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        space = "" if style.chat else " "
        pairs = [(self._question(s), space + s["answer"][0]) for s in shots]
        prefix, context = prompt(lm, style, pairs, self._question(item),
                                 instruction=style.options.get("instruction", ""))
        aliases = tuple(dict.fromkeys(space + a.strip() for a in item["answer"] if a.strip()))
        requests: dict[str, Request] = {"aliases": Choices(context, aliases, prefix)}
        if generation:
            requests["answer"] = Generate(context, stop=("\n",), max_new_tokens=self.max_new_tokens,
                                          prefix=prefix)
        return requests

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        metrics = {"alias_logprob": max(outputs["aliases"].logprobs)}
        prediction = ""
        if "answer" in outputs:
            prediction = outputs["answer"].strip()
            metrics["exact_match"] = exact_match(prediction, item["answer"])
        return ItemResult(item.id, prediction, " | ".join(item["answer"]), metrics)
