"""Dialogue: MuTual (dev), choose the right next turn of a conversation among four candidates.

Paper metrics: R@1 and MRR of the gold response when the four candidates are ranked by
log-likelihood after the dialogue. The dialogue is run once and its KV cache shared by the four
candidates (the runner's one-context-per-item). Continuous metric: gold-response margin.
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
    margin,
    prompt,
)
from editgate.abilities.metrics import gold_rank
from editgate.data import DatasetSpec, Field
from editgate.models import LoadedModel
from editgate.runner import Choices

LETTERS = "ABCD"
_TURN = re.compile(r"(?:^|\s)([mf]) : ")


def turns(text: str) -> list[str]:
    """'m : hi . f : hello .' → ['M: hi .', 'F: hello .'] (speaker tags upper-cased)."""
    parts = _TURN.split(" " + text.strip())
    return [f"{speaker.upper()}: {body.strip()}" for speaker, body in zip(parts[1::2], parts[2::2])]


class Dialogue(Ability):
    name = "dialogue"
    title = "Dialogue (MuTual)"
    dataset = DatasetSpec(
        folder="mutual", filename="dev.jsonl",
        schema=(Field("id", str), Field("article", str, nonempty=True),
                Field("options", list, nonempty=True), Field("answers", str)),
    )
    metrics = (
        Metric("r_at_1", "paper", chance=0.25),
        Metric("mrr", "paper", chance=(1 + 1 / 2 + 1 / 3 + 1 / 4) / 4),
        Metric("margin", "continuous", unit="nats"),
    )

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        pairs = [("\n".join(turns(s["article"])), "\n" + turns(s["options"][LETTERS.index(
            s["answers"])])[0]) for s in shots]
        prefix, context = prompt(lm, style, pairs, "\n".join(turns(item["article"])),
                                 instruction=style.options.get("instruction", ""))
        lead = "" if style.chat else "\n"
        options = tuple(lead + (turns(o) or [o.strip()])[0] for o in item["options"])
        return {"options": Choices(context, options, prefix)}

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        scores = outputs["options"]
        # Sum (a response's log-likelihood) or per-token mean (no bias against long responses).
        mean = style is not None and style.options.get("normalize") == "mean"
        values = scores.mean_logprobs if mean else scores.logprobs
        gold = LETTERS.index(item["answers"])
        rank = gold_rank(values, gold)
        predicted = max(range(len(values)), key=lambda i: values[i])
        return ItemResult(item.id, LETTERS[predicted], LETTERS[gold], {
            "r_at_1": float(rank == 1), "mrr": 1.0 / rank, "margin": margin(values, gold)})
