"""glue_eval SST-2: the harness's 856-row class-balanced subset of SST-2 validation."""

from __future__ import annotations

from editgate.abilities.glue_eval import GlueEvalTask, binary_fields, glue_dataset


class GlueSST2(GlueEvalTask):
    name = "glue_sst2"
    title = "Sentiment (glue_eval SST-2)"
    datasets = ("sst2", "glue_eval")
    dataset = glue_dataset("sst2", *binary_fields("sentence"))
    marker = "Sentiment :"
    answers = (("positive", 1), ("negative", 0))
    label_words = ("negative", "positive")

    def prompt(self, item) -> str:
        return "Review :" + item["sentence"] + "\nSentiment :"
