"""glue_eval MMLU: the harness's 1,516-question, answer-balanced MMLU subset (four choices)."""

from __future__ import annotations

from editgate.abilities.glue_eval import GlueEvalTask, glue_dataset
from editgate.data import Field

LETTERS = ("A", "B", "C", "D")


class GlueMMLU(GlueEvalTask):
    name = "glue_mmlu"
    title = "Knowledge (glue_eval MMLU)"
    datasets = ("mmlu", "glue_eval")
    dataset = glue_dataset("mmlu", Field("question", str, nonempty=True), Field("subject", str),
                           Field("choices", list), Field("answer", int))
    marker = "Answer:"
    # The harness looks for a letter followed by a line break, A first.
    answers = tuple((f"{letter.lower()}\n", index) for index, letter in enumerate(LETTERS))
    label_words = LETTERS

    def prompt(self, item) -> str:
        options = "".join(f"({letter}) {choice}\n"
                          for letter, choice in zip(LETTERS, item["choices"]))
        return f"Question: {item['question']}\n{options}Answer:"

    def gold(self, item, style) -> int:
        return int(item["answer"])

    def answer_text(self, prompt: str, generated: str) -> str:
        """The harness searches the generated text alone, unstripped (the line break counts)."""
        return generated
