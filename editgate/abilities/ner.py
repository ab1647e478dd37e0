"""Named-entity recognition: CoNLL-2003 (English dev), entities listed by generation.

The model writes the sentence's entities as 'EU (ORG); German (MISC)' (or 'none'), the form the
k-shot examples show. Paper metric, done right: entity-level micro F1 — an entity counts when its
exact text and type match a gold entity (as multisets per sentence), summed over all sentences —
not the paper's recall of gold strings found anywhere in the output. Continuous metric: mean
per-token log-prob of the gold entity list.
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
from editgate.abilities.metrics import (
    entity_counts,
    f1_from_counts,
    format_entities,
    iob2_entities,
    parse_entities,
)
from editgate.data import DatasetSpec, Field
from editgate.models import LoadedModel
from editgate.runner import Choices, Generate

INSTRUCTION = ("List the named entities in each sentence with their types: PER (person), "
               "LOC (location), ORG (organization), MISC (other names). Write none if there are "
               "no entities.\n\n")


class NER(Ability):
    name = "ner"
    title = "NER (CoNLL-2003)"
    dataset = DatasetSpec(
        folder="conll2003", filename="validation.jsonl",
        schema=(Field("idx", int), Field("tokens", list, nonempty=True), Field("ner_tags", list)),
    )
    metrics = (
        Metric("f1", "paper", generation=True, micro_f1=True),
        Metric("list_logprob", "continuous", unit="nats"),
    )
    max_new_tokens = 64

    @staticmethod
    def _sentence(item: Item) -> str:
        return f"Sentence: {' '.join(item['tokens'])}\nEntities:"

    @staticmethod
    def _gold(item: Item) -> list[tuple[str, str]]:
        return iob2_entities(item["tokens"], item["ner_tags"])

    def choose_shots(self, pool: Sequence[Item], k: int) -> list[Item]:
        """k − 1 sentences with entities (they teach the format), one without ('none'); short
        headline fragments only when the pool has nothing better."""
        full = [i for i in pool if len(i["tokens"]) > 3]
        with_entities = [i for i in full if self._gold(i)]
        without = [i for i in full if not self._gold(i)]
        rest = [i for i in pool if i not in with_entities[: k - 1] + without[:1]]
        return (with_entities[: max(k - 1, 1)] + without[:1] + rest)[:k]

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        space = "" if style.chat else " "
        pairs = [(self._sentence(s), space + format_entities(self._gold(s))) for s in shots]
        prefix, context = prompt(lm, style, pairs, self._sentence(item),
                                 instruction=style.options.get("instruction", INSTRUCTION))
        gold = space + format_entities(self._gold(item))
        requests: dict[str, Request] = {"gold_list": Choices(context, (gold,), prefix)}
        if generation:
            requests["entities"] = Generate(context, stop=("\n",), max_new_tokens=self.max_new_tokens,
                                            prefix=prefix)
        return requests

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        gold = self._gold(item)
        metrics = {"list_logprob": mean_logprob(outputs["gold_list"])}
        prediction = ""
        if "entities" in outputs:
            prediction = outputs["entities"].strip()
            tp, fp, fn = entity_counts(parse_entities(prediction), gold)
            metrics.update({"f1": f1_from_counts(tp, fp, fn),
                            "f1.tp": float(tp), "f1.fp": float(fp), "f1.fn": float(fn)})
        return ItemResult(item.id, prediction, format_entities(gold), metrics)
