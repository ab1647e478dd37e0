"""Reasoning: GSM8K (test), grade-school math word problems.

Paper metric: solve rate — a greedy chain of thought, its final number extracted and compared
numerically with the gold answer. Unlike the paper's released code, the prompt never contains the
item's gold rationale; k-shot examples come from the reserved shot pool. Continuous metric: mean
per-token log-prob of the gold solution (calculator annotations removed), which still moves when
a small model's solve rate sits at the floor.
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
from editgate.abilities.metrics import extract_answer, gsm8k_gold, gsm8k_rationale
from editgate.data import DatasetSpec, Field, HubSource
from editgate.models import LoadedModel
from editgate.runner import Choices, Generate


class Reasoning(Ability):
    name = "reasoning"
    title = "Reasoning (GSM8K)"
    dataset = DatasetSpec(
        folder="gsm8k", filename="test.jsonl",
        schema=(Field("question", str, nonempty=True), Field("answer", str, nonempty=True)),
        hub=HubSource("openai/gsm8k", "test", name="main"),
    )
    metrics = (
        Metric("solve_rate", "paper", generation=True),
        Metric("solution_logprob", "continuous", unit="nats"),
    )
    shot_pool_size = 8
    max_new_tokens = 256

    @staticmethod
    def _question(item: Item) -> str:
        return f"Question: {item['question'].strip()}\nAnswer:"

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        space = "" if style.chat else " "
        pairs = [(self._question(s), space + gsm8k_rationale(s["answer"])) for s in shots]
        instruction = style.options.get(
            "instruction", "Solve each problem step by step, then give the final number as "
            "'The answer is N.'\n\n")
        prefix, context = prompt(lm, style, pairs, self._question(item), instruction=instruction)
        requests: dict[str, Request] = {
            "solution": Choices(context, (space + gsm8k_rationale(item["answer"]),), prefix)}
        if generation:
            requests["chain"] = Generate(context, stop=("\n\n", "Question:"),
                                         max_new_tokens=self.max_new_tokens, prefix=prefix)
        return requests

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        gold = gsm8k_gold(item["answer"])
        metrics = {"solution_logprob": mean_logprob(outputs["solution"])}
        prediction = ""
        if "chain" in outputs:
            found = extract_answer(outputs["chain"])
            prediction = "" if found is None else str(found)
            metrics["solve_rate"] = float(found == gold)
        return ItemResult(item.id, prediction, str(gold), metrics)
