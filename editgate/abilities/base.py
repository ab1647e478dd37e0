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

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from editgate.data import DatasetSpec, Record
from editgate.fingerprint import code_fingerprint
from editgate.models import LoadedModel
from editgate.runner import AbilityRunner, Choices, ChoiceScores, Distributions, Generate

Request = Choices | Generate | Distributions
Output = ChoiceScores | str | Any


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["paper", "continuous"]
    chance: float | None = None  # score of a random guesser, for the above-chance check
    generation: bool = False  # needs greedy generation: skipped by the quick profile
    unit: str = ""  # "" for fractions in [0, 1]; "nats" for log-probabilities
    # Micro-averaged F1: items also carry "<name>.tp/.fp/.fn" counts and the aggregate is
    # 2·ΣTP / (2·ΣTP + ΣFP + ΣFN) instead of the mean of the per-item values (see gate.aggregate).
    micro_f1: bool = False


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
    # The data sets it scores, as the field names them: test ids carry them as keywords, so
    # `-k sst2` selects every ability scored on SST-2 (default: the dataset's folder name).
    datasets: ClassVar[tuple[str, ...]] = ()
    # The profiles it belongs to (None: every general profile; see editgate.profiles).
    profiles: ClassVar[tuple[str, ...] | None] = None
    # Its prompt style where editgate/configs/prompts.toml names none (a plugin's own): shots,
    # chat and ability options, e.g. {"shots": 4}.
    default_style: ClassVar[Mapping[str, Any]] = {}

    # ----------------------------------------------------------------- override these

    def item_id(self, record: Record) -> str:
        for key in ("id", "idx", "case_id"):
            if key in record.data:
                return str(record.data[key])
        return str(record.line)

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        raise NotImplementedError

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        raise NotImplementedError

    # ----------------------------------------------------------------- shared helpers

    def keywords(self) -> tuple[str, ...]:
        """Names `pytest -k` selects this ability by: its own and its data sets'."""
        return (self.name, *(self.datasets or (self.dataset.folder,)))

    def note(self, style: PromptStyle) -> str | None:
        """A line the report prints beside the ability's scores (how to read them), if any."""
        return None

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

    def evaluate(self, run: AbilityRun, runner: AbilityRunner, state: str,
                 progress: Callable[[int], None] | None = None) -> list[ItemResult]:
        """Per-item results on the runner's model in weight state ``state`` ('base' = unedited).

        The default builds every item's requests, runs them in bulk and scores each item; an
        ability that compares against its own baseline (the KL canary) overrides this.
        """
        return run_requests(run, runner, progress)


@dataclass(frozen=True)
class AbilityRun:
    """An ability resolved for one session: what is scored, and how it is prompted."""

    ability: Ability
    items: tuple[Item, ...]
    shots: tuple[Item, ...]
    style: PromptStyle
    generation: bool
    data_fingerprint: str
    profile: str
    # Requests digests per model fingerprint (building every prompt again for each key is slow).
    _requests_digests: dict[str, str | None] = field(default_factory=dict, compare=False,
                                                     repr=False)

    @property
    def name(self) -> str:
        return self.ability.name

    def key(self) -> dict[str, Any]:
        """Everything the scores depend on apart from the model, its weights and the kernels:
        the items and prompt style, and the ability's code (its module and what it imports)."""
        return {
            "ability": self.name, "code": code_fingerprint(type(self.ability)),
            "data": self.data_fingerprint, "items": [i.id for i in self.items],
            "shots": [s.id for s in self.shots], "style": self.style.key(),
            "generation": self.generation,
        }

    def requests_digest(self, lm: LoadedModel) -> str | None:
        """sha256 of the exact requests (prompt texts, continuations, stop strings, caps) every item
        sends to the runner on ``lm``; None for an ability that builds no per-item requests."""
        if lm.fingerprint not in self._requests_digests:
            sha = hashlib.sha256()
            try:
                for item in self.items:
                    requests = self.ability.requests(item, self.shots, self.style, lm,
                                                     self.generation)
                    sha.update(json.dumps({name: _request_fields(request) for name, request
                                           in sorted(requests.items())}).encode())
                digest: str | None = sha.hexdigest()
            except NotImplementedError:  # an ability that overrides evaluate() instead
                digest = None
            self._requests_digests[lm.fingerprint] = digest
        return self._requests_digests[lm.fingerprint]


def _request_fields(request: Any) -> dict[str, Any]:
    """A request's fields as JSON-able values; a callable (a Distributions reducer) by name."""
    fields = {"kind": type(request).__name__}
    for item in dataclasses.fields(request):
        value = getattr(request, item.name)
        fields[item.name] = (value.__qualname__ if callable(value) else value)
    return fields


def run_requests(run: AbilityRun, runner: AbilityRunner,
                 progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """The default evaluation: every item's requests, run in bulk by kind, then scored per item."""
    per_item: list[dict[str, Request]] = [
        run.ability.requests(item, run.shots, run.style, runner.lm, run.generation)
        for item in run.items
    ]
    outputs: list[dict[str, Any]] = [{} for _ in per_item]
    total = sum(len(reqs) for reqs in per_item)
    step = (lambda n: progress(n * len(run.items) / max(total, 1))) if progress else None
    for kind, method in ((Choices, runner.loglikelihood), (Distributions, runner.distributions),
                         (Generate, runner.generate)):
        keys = [(i, k) for i, reqs in enumerate(per_item) for k, r in reqs.items()
                if isinstance(r, kind)]
        if keys:
            for (i, k), out in zip(keys, method([per_item[i][k] for i, k in keys], progress=step)):
                outputs[i][k] = out
    return [run.ability.score(item, out, run.style) for item, out in zip(run.items, outputs)]


def prompt(lm: LoadedModel, style: PromptStyle, shots: Sequence[tuple[str, str]], query: str, *,
           sep: str = "\n\n", instruction: str = "") -> tuple[str, str]:
    """(shared prefix, per-item context) of a k-shot prompt; ``shots`` are (prompt, answer) pairs.

    Plain: ``instruction + Σ(prompt + answer + sep) + query``, answers keeping their leading space.
    Chat: the instruction as system turn, each shot a user/assistant exchange, the query a last
    user turn; the shot turns render to a string prefix of the whole, so they are still shared.
    """
    if not style.chat:
        return instruction + "".join(q + a + sep for q, a in shots), query
    messages = [{"role": "system", "content": instruction.strip()}] if instruction else []
    for question, answer in shots:
        messages += [{"role": "user", "content": question.strip()},
                     {"role": "assistant", "content": answer.strip()}]
    full = lm.chat_messages([*messages, {"role": "user", "content": query.strip()}])
    prefix = lm.chat_messages(messages, generation_prompt=False) if shots else ""
    if not full.startswith(prefix):  # a template that rewrites earlier turns: share nothing
        prefix = ""
    return prefix, full[len(prefix):]


def wrap(lm: LoadedModel, style: PromptStyle, prefix: str, body: str) -> tuple[str, str]:
    """Apply the chat template when the style asks for it: (shared prefix, per-item context).

    With the chat template the whole prompt is one user turn, so nothing can be shared; without it
    the few-shot block is a shared prefix whose KV cache is computed once.
    """
    if style.chat:
        return "", lm.chat((prefix + body).rstrip())
    return prefix, body


def margin(scores: ChoiceScores | Sequence[float], gold: int) -> float:
    """log P(gold) − max log P(other): > 0 exactly when the gold choice wins."""
    values = scores.logprobs if isinstance(scores, ChoiceScores) else scores
    others = [lp for i, lp in enumerate(values) if i != gold]
    return values[gold] - max(others)


def calibrated(scores: ChoiceScores, content_free: ChoiceScores | None) -> tuple[float, ...]:
    """Contextual calibration (Zhao et al. 2021): subtract each label's log-prob given a
    content-free input, cancelling the model's prior for one label. Identity without one."""
    if content_free is None:
        return scores.logprobs
    return tuple(lp - prior for lp, prior in zip(scores.logprobs, content_free.logprobs))


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def choice_result(item_id: str, values: Sequence[float], gold: int,
                  names: Sequence[str] | None = None) -> ItemResult:
    """The result of a pick-one-choice item: accuracy of the argmax and the gold margin."""
    predicted = argmax(values)
    name = (lambda i: names[i]) if names is not None else str
    return ItemResult(item_id, name(predicted), name(gold),
                      {"accuracy": float(predicted == gold), "margin": margin(values, gold)})


class Classification(Ability):
    """Pick one of ``labels`` by log-likelihood after the prompt: accuracy and the gold margin.

    Subclasses give the labels, the prompt of one item (ending where the label starts), its gold
    index and a content-free prompt for calibration (``calibrate = true`` in prompts.toml).
    """

    labels: ClassVar[tuple[str, ...]]
    metrics = (Metric("accuracy", "paper", chance=0.5),
               Metric("margin", "continuous", unit="nats"))

    def example(self, item: Mapping[str, Any] | Item) -> str:
        raise NotImplementedError

    def gold(self, item: Item) -> int:
        raise NotImplementedError

    def content_free(self) -> str:
        raise NotImplementedError

    def choose_shots(self, pool: Sequence[Item], k: int) -> list[Item]:
        """Labels in turn (first label first), so a k-shot prompt is balanced and has no streak."""
        by_label = [[i for i in pool if self.gold(i) == g] for g in range(len(self.labels))]
        shots, cursor = [], [0] * len(self.labels)
        for n in range(k):
            g = n % len(self.labels)
            if cursor[g] < len(by_label[g]):
                shots.append(by_label[g][cursor[g]])
                cursor[g] += 1
        return shots

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        space = "" if style.chat else " "
        pairs = [(self.example(s), space + self.labels[self.gold(s)]) for s in shots]
        instruction = style.options.get("instruction", "")
        continuations = tuple(space + label for label in self.labels)
        prefix, context = prompt(lm, style, pairs, self.example(item), instruction=instruction)
        requests: dict[str, Request] = {"label": Choices(context, continuations, prefix)}
        if style.options.get("calibrate"):
            prefix, context = prompt(lm, style, pairs, self.content_free(), instruction=instruction)
            requests["content_free"] = Choices(context, continuations, prefix)
        return requests

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        values = calibrated(outputs["label"], outputs.get("content_free"))
        return choice_result(item.id, values, self.gold(item), self.labels)


def mean_logprob(scores: ChoiceScores, index: int = 0) -> float:
    """Mean per-token log-probability of one continuation (nats/token)."""
    return scores.logprobs[index] / max(scores.token_counts[index], 1)
