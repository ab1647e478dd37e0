"""glue_eval MRPC: paraphrase detection on the harness's 258-row subset of MRPC validation."""

from __future__ import annotations

from editgate.abilities.glue_eval import GlueEvalTask, binary_fields, glue_dataset


class GlueMRPC(GlueEvalTask):
    name = "glue_mrpc"
    title = "Paraphrase (glue_eval MRPC)"
    datasets = ("mrpc", "glue_eval")
    dataset = glue_dataset("mrpc", *binary_fields("sentence1", "sentence2"))
    marker = "Answer:"
    answers = (("yes", 1), ("no", 0))
    label_words = ("No", "Yes")

    def prompt(self, item) -> str:
        return ("Are the sentences paraphrases of each other.\n"
                f"Sentence 1: {item['sentence1']}\nSentence 2: {item['sentence2']}\nAnswer:")
