"""glue_eval CoLA: linguistic acceptability on the harness's 644-row subset of CoLA validation."""

from __future__ import annotations

from editgate.abilities.glue_eval import GlueEvalTask, binary_fields, glue_dataset


class GlueCoLA(GlueEvalTask):
    name = "glue_cola"
    title = "Acceptability (glue_eval CoLA)"
    datasets = ("cola", "glue_eval")
    dataset = glue_dataset("cola", *binary_fields("sentence"))
    marker = "Answer:"
    answers = (("yes", 1), ("no", 0))
    label_words = ("No", "Yes")

    def prompt(self, item) -> str:
        # The trailing space is the harness's.
        return f"Is this sentence linguistically acceptable?\nSentence: {item['sentence']}\nAnswer: "
