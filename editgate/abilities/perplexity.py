"""Canary: language-modelling loss on WikiText-2 (raw test), the first thing to rise on collapse.

Each item is one WikiText-2 paragraph (its first ``WORDS`` words), scored after its article's
title line. Metric: mean per-token log-probability (nats/token) — the negative of the NLL whose
exponential is perplexity — so higher is better, as the gate assumes. Paragraphs with even
``idx`` belong to this canary, odd ones to :mod:`kl_drift`, so the two never share text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from editgate.abilities.base import Ability, Item, ItemResult, Metric, Output, PromptStyle, Request
from editgate.data import DatasetSpec, Field, Record
from editgate.models import LoadedModel
from editgate.runner import Choices

_TITLE = re.compile(r"^ = ([^=].*?) = $")  # level-1 heading; ' = = Section = = ' is level 2
WIKITEXT = DatasetSpec(
    folder="wikitext2", filename="wikitext2_raw_test.jsonl",
    schema=(Field("idx", int), Field("text", str)),
)


def paragraphs(records: Sequence[Record], parity: int, words: int, min_words: int = 40,
               ) -> list[Item]:
    """Paragraphs (not headings) of at least ``min_words`` words with ``idx % 2 == parity``,
    each cut to ``words`` words and carrying its article title."""
    items, title = [], ""
    for record in records:
        text = record["text"].strip()
        heading = _TITLE.match(record["text"])
        if heading:
            title = heading.group(1).strip()
            continue
        if text.startswith("=") or len(text.split()) < min_words or record["idx"] % 2 != parity:
            continue
        items.append(Item(str(record["idx"]), {"title": title, "text": " ".join(text.split()[:words])},
                          f"{record.path}:{record.line}"))
    return items


class Perplexity(Ability):
    name = "perplexity"
    title = "Canary: WikiText-2 log-likelihood"
    dataset = WIKITEXT
    metrics = (Metric("token_logprob", "continuous", unit="nats"),)
    words = 160  # ~220 tokens: long enough for in-context prediction, cheap enough for 50 items

    def split(self, records: Sequence[Record]) -> tuple[list[Item], list[Item]]:
        return [], paragraphs(records, parity=0, words=self.words)

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        return {"text": Choices(f"= {item['title']} =\n", (item["text"],))}

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        scores = outputs["text"]
        value = scores.logprobs[0] / scores.token_counts[0]
        return ItemResult(item.id, f"{scores.token_counts[0]} tokens", item["title"],
                          {"token_logprob": value})
