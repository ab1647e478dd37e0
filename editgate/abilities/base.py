"""What an ability is: dataset → items → prompt → runner requests → per-item scores.

An ability is one small class (see ``sentiment.py``): a :class:`~editgate.data.DatasetSpec`, the
metrics it reports, how an item becomes requests, and how outputs become per-item metric values.
Everything else — item selection, few-shot examples, chat wrapping, batching, caching, gating —
is shared machinery here and in :mod:`editgate.evaluate`.

Each ability reports a *paper* metric (the one arXiv 2401.04700 uses, computed correctly) and a
*continuous* metric (a log-probability), because a small model sits near the floor on some paper
metrics, where only the continuous one can show damage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from editgate.data import DatasetSpec, Record
from editgate.models import LoadedModel
from editgate.runner import Choices, ChoiceScores, Generate

Request = Choices | Generate
Output = ChoiceScores | str


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["paper", "continuous"]
    chance: float | None = None  # score of a random guesser, for the above-chance check
    generation: bool = False  # needs greedy generation: skipped by the quick profile
    unit: str = ""  # "" for fractions in [0, 1]; "nats" for log-probabilities


@dataclass(frozen=True)
class Item:
    """One scored example; ``fields`` is the validated JSON record."""

    id: str
    fields: Mapping[str, Any]
    source: str  # file:line

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


@dataclass(frozen=True)
class ItemResult:
    """Per-item outcome, kept for the paired gate and the report's worst-item drill-down."""

    item_id: str
    prediction: str
    gold: str
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.item_id, "prediction": self.prediction, "gold": self.gold,
                "metrics": self.metrics}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ItemResult:
        return cls(data["id"], data["prediction"], data["gold"], dict(data["metrics"]))


@dataclass(frozen=True)
class PromptStyle:
    """How prompts are formed for one (model, ability): chosen per model in configs/prompts.toml."""

    shots: int = 0  # k-shot examples from the reserved shot pool (never scored)
    chat: bool = False  # wrap the prompt in the model's chat template
    options: Mapping[str, Any] = field(default_factory=dict)  # ability-specific knobs

    def key(self) -> dict[str, Any]:
        return {"shots": self.shots, "chat": self.chat, "options": dict(self.options)}


def stable_order(ability: str, ids: Sequence[str]) -> list[int]:
    """A fixed pseudo-random order of items (hash of ability and id): deterministic subsampling
    that does not depend on Python's hash seed, library versions, or the file's order."""
    digest = lambda i: hashlib.blake2b(f"{ability}:{ids[i]}".encode(), digest_size=8).digest()
    return sorted(range(len(ids)), key=digest)


class Ability:
    """Base class. Subclasses set the class attributes and implement ``requests`` and ``score``."""

    name: ClassVar[str]
    title: ClassVar[str]  # e.g. "Sentiment (SST-2)"
    dataset: ClassVar[DatasetSpec]
    metrics: ClassVar[tuple[Metric, ...]]
    shot_pool_size: ClassVar[int] = 16  # leading records reserved as few-shot examples

    # ----------------------------------------------------------------- override these

    def item_id(self, record: Record) -> str:
        for key in ("id", "idx", "case_id"):
            if key in record.data:
                return str(record.data[key])
        return str(record.line)

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        raise NotImplementedError

    def score(self, item: Item, outputs: Mapping[str, Output]) -> ItemResult:
        raise NotImplementedError

    # ----------------------------------------------------------------- shared helpers

    @property
    def paper_metric(self) -> Metric:
        return next(m for m in self.metrics if m.kind == "paper")

    @property
    def continuous_metric(self) -> Metric:
        return next(m for m in self.metrics if m.kind == "continuous")

    def active_metrics(self, generation: bool) -> tuple[Metric, ...]:
        return tuple(m for m in self.metrics if generation or not m.generation)

    def split(self, records: Sequence[Record]) -> tuple[list[Item], list[Item]]:
        """(shot pool, scorable items): the first ``shot_pool_size`` records are never scored."""
        items = [Item(self.item_id(r), r.data, f"{r.path}:{r.line}") for r in records]
        return items[: self.shot_pool_size], items[self.shot_pool_size:]

    def choose_shots(self, pool: Sequence[Item], k: int) -> list[Item]:
        return list(pool[:k])

    def select(self, items: Sequence[Item], limit: int | None) -> list[Item]:
        """Deterministic subsample of ``limit`` items (all when None), in a stable order."""
        order = stable_order(self.name, [item.id for item in items])
        chosen = order if limit is None else order[:limit]
        return [items[i] for i in chosen]


def wrap(lm: LoadedModel, style: PromptStyle, prefix: str, body: str) -> tuple[str, str]:
    """Apply the chat template when the style asks for it: (shared prefix, per-item context).

    With the chat template the whole prompt is one user turn, so nothing can be shared; without it
    the few-shot block is a shared prefix whose KV cache is computed once.
    """
    if style.chat:
        return "", lm.chat((prefix + body).rstrip())
    return prefix, body


def margin(scores: ChoiceScores, gold: int) -> float:
    """log P(gold) − max log P(other): > 0 exactly when the gold choice wins."""
    others = [lp for i, lp in enumerate(scores.logprobs) if i != gold]
    return scores.logprobs[gold] - max(others)
