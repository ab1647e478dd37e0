"""The glue_eval protocol: how lifelong-editing papers (AlphaEdit, ICLR 2025, and the repositories
that copy its evaluation) score side effects, reproduced so editgate's numbers sit beside theirs.

Each task is a fixed item file of ``<data>/glue_eval`` (``README.md`` there gives the source).
The protocol, as the harness runs it (``experiments/evaluate.py`` calls ``GLUEEval.evaluate`` with
its default generation length):

* rows 0–9 are the few-shot pool and are never scored; the items are rows 10 onward, in file
  order (papers score the first 100), zero-shot;
* the prompt is the task's template (each task's file); the model answers by greedy generation of
  ``max_new_tokens`` tokens (5, the harness's default for every task; its per-task evaluators
  default to 3 or 10 when called alone: ``--prompt glue_sst2.max_new_tokens=3``), stopping early
  only at end-of-sequence;
* the answer is read by substring from the text after the task's marker ("Sentiment :",
  "Answer:", …), first label word first; an answer with no label word is *unanswered* and counts
  as a wrong prediction of class −1;
* the metrics are scikit-learn's weighted F1 and Matthews correlation over the items.

Beside the paper metrics every task reports ``answered`` (the share of parsable answers: an edited
model that stops answering in the format is damaged too) and the continuous ``margin``: the mean
per-token log-probability of the gold label word after the prompt minus the best other one — the
harness's own "highest probability answer", as a number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from editgate.abilities.base import Ability, Item, ItemResult, Metric, Output, PromptStyle, Request
from editgate.data import DatasetSpec, Field
from editgate.models import LoadedModel
from editgate.runner import Choices, ChoiceScores, Generate

GLUE_EVAL = "glue_eval"
FEW_SHOT_ROWS = 10  # the harness's few-shot pool: never scored
DEFAULT_NEW_TOKENS = 5  # GLUEEval.evaluate's gen_len, used for every task by the papers' runs
UNANSWERED = -1


def glue_dataset(task: str, *fields: Field) -> DatasetSpec:
    return DatasetSpec(folder=GLUE_EVAL, filename=f"{task}.jsonl",
                       schema=(Field("position", int), *fields))


class GlueEvalTask(Ability):
    """One glue_eval task. Subclasses give the prompt, the answer marker, the label words (in
    the order the harness tests them) and each item's gold class."""

    shot_pool_size = FEW_SHOT_ROWS
    profiles = ("glue-eval",)
    metrics = (Metric("weighted_f1", "paper", generation=True),
               Metric("mcc", "paper", chance=0.0, generation=True),
               Metric("answered", "paper", generation=True),
               Metric("margin", "continuous", unit="nats"))
    marker: ClassVar[str]  # the answer is read after the last occurrence of this text
    # (substring tested in the generated answer, lower-cased → class), in the harness's order.
    answers: ClassVar[tuple[tuple[str, int], ...]]
    label_words: ClassVar[tuple[str, ...]]  # class c's word, scored for the margin

    def prompt(self, item: Mapping[str, Any] | Item) -> str:
        raise NotImplementedError

    def gold(self, item: Item, style: PromptStyle) -> int:
        return int(item["label"])

    def select(self, items: Sequence[Item], limit: int | None) -> list[Item]:
        """The harness's items: the rows after the few-shot pool, in file order."""
        return list(items[:limit] if limit is not None else items)

    def answer_text(self, prompt: str, generated: str) -> str:
        """Where the harness looks for the answer: the decoded prompt and answer, after the last
        ``marker``, stripped."""
        return (prompt + generated).split(self.marker)[-1].strip()

    def parse(self, prompt: str, generated: str) -> int:
        """The class of a generated answer, or :data:`UNANSWERED`."""
        answer = self.answer_text(prompt, generated).lower()
        return next((label for word, label in self.answers if word in answer), UNANSWERED)

    def requests(self, item: Item, shots: Sequence[Item], style: PromptStyle, lm: LoadedModel,
                 generation: bool) -> dict[str, Request]:
        prompt = self.prompt(item)
        requests: dict[str, Request] = {
            "words": Choices(prompt, tuple(f" {word}" for word in self.label_words))}
        if generation:
            tokens = int(style.options.get("max_new_tokens", DEFAULT_NEW_TOKENS))
            requests["answer"] = Generate(prompt, stop=(), max_new_tokens=tokens)
        return requests

    def score(self, item: Item, outputs: Mapping[str, Output],
              style: PromptStyle | None = None) -> ItemResult:
        style = style or PromptStyle()
        gold = self.gold(item, style)
        words: ChoiceScores = outputs["words"]
        means = words.mean_logprobs
        metrics = {"margin": means[gold] - max(v for c, v in enumerate(means) if c != gold)}
        prediction = ""
        if "answer" in outputs:
            generated = outputs["answer"]
            predicted = self.parse(self.prompt(item), generated)
            correct = float(predicted == gold)
            for name in ("weighted_f1", "mcc"):
                metrics.update({name: correct, f"{name}.pred": float(predicted),
                                f"{name}.gold": float(gold)})
            metrics["answered"] = float(predicted != UNANSWERED)
            prediction = generated
        return ItemResult(item.id, prediction, self.label_words[gold], metrics)

    def item_id(self, record) -> str:
        return str(record["position"])


def binary_fields(*names: str) -> tuple[Field, ...]:
    return (*(Field(name, str, nonempty=True) for name in names), Field("label", int))
