"""glue_eval RTE: entailment on the harness's 262-row subset of RTE validation.

The harness asks "True or False?" and reads "True" as class 1, but its data encode entailment as 0
(GLUE's encoding): it scores RTE against inverted labels, so a model that judges entailment right
scores low there. This ability reproduces that by default, for numbers comparable with the papers,
and says so in the report; ``--prompt glue_rte.labels=corrected`` scores the true direction.
"""

from __future__ import annotations

from editgate.abilities.base import Item, PromptStyle
from editgate.abilities.glue_eval import GlueEvalTask, binary_fields, glue_dataset
from editgate.errors import ConfigError

LABEL_MODES = ("harness", "corrected")


class GlueRTE(GlueEvalTask):
    name = "glue_rte"
    title = "NLI (glue_eval RTE)"
    datasets = ("rte", "glue_eval")
    dataset = glue_dataset("rte", *binary_fields("sentence1", "sentence2"))
    marker = "answer:"
    answers = (("false", 0), ("true", 1))
    label_words = ("False", "True")

    def prompt(self, item) -> str:
        return f"{item['sentence1']}\nquestion: {item['sentence2']} True or False?\nanswer:"

    def gold(self, item: Item, style: PromptStyle) -> int:
        """The class whose word is counted right: the file's label as the harness reads it, or
        "True" for entailment (label 0) when corrected."""
        mode = style.options.get("labels", "harness")
        if mode not in LABEL_MODES:
            raise ConfigError(f"glue_rte: labels = {mode!r}; choose one of {', '.join(LABEL_MODES)}")
        label = int(item["label"])
        return label if mode == "harness" else 1 - label

    def note(self, style: PromptStyle) -> str | None:
        if style.options.get("labels", "harness") == "harness":
            return ("scored against the harness's inverted RTE labels (\"True\" counts right for "
                    "not_entailment), as the papers' tables are; --prompt glue_rte.labels=corrected "
                    "scores the true direction")
        return "scored in the true direction (the papers' tables use inverted labels)"
