"""The glue-eval profile reproduces the glue_eval protocol of lifelong-editing papers.

`plain_protocol` below is an independent implementation written from the protocol's facts
(`<data>/glue_eval/README.md`, the harness's call of every task with 5 generated tokens): one
item at a time, the task's prompt, `model.generate` as the harness calls it, the answer read by
substring after the task's marker, weighted F1 and MCC written out by hand. The profile (batched
runner, per-item results, corpus statistics) must agree with it item by item.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editgate.abilities.base import ItemResult
from editgate.evaluate import evaluate, prepare
from editgate.gate import aggregate, paired_gate
from editgate.profiles import get_profile
from editgate.runner import AbilityRunner

pytest_plugins = ["pytester"]

TASKS = ("glue_sst2", "glue_mrpc", "glue_cola", "glue_rte", "glue_mmlu")
NEW_TOKENS = 5


# --------------------------------------------------------------------------- the plain protocol


def plain_prompt(task: str, row: dict) -> tuple[str, str]:
    """(prompt, marker the answer is read after) of one row."""
    if task == "glue_sst2":
        return "Review :" + row["sentence"] + "\nSentiment :", "Sentiment :"
    if task == "glue_mrpc":
        return ("Are the sentences paraphrases of each other.\nSentence 1: " + row["sentence1"]
                + "\nSentence 2: " + row["sentence2"] + "\nAnswer:"), "Answer:"
    if task == "glue_cola":
        return ("Is this sentence linguistically acceptable?\nSentence: " + row["sentence"]
                + "\nAnswer: "), "Answer:"
    if task == "glue_rte":
        return (row["sentence1"] + "\nquestion: " + row["sentence2"] + " True or False?\nanswer:",
                "answer:")
    lines = "".join(f"({'ABCD'[i]}) {c}\n" for i, c in enumerate(row["choices"]))
    return "Question: " + row["question"] + "\n" + lines + "Answer:", ""


def plain_answer(task: str, prompt: str, marker: str, full_text: str) -> int:
    """The class the harness reads from the decoded sequence, −1 when none."""
    if task == "glue_mmlu":  # the generated text alone; a letter then a line break
        generated = full_text[len(prompt):] if full_text.startswith(prompt) else full_text
        for index, letter in enumerate("abcd"):
            if letter + "\n" in generated.lower():
                return index
        return -1
    answer = full_text.split(marker)[-1].strip().lower()
    words = {"glue_sst2": [("positive", 1), ("negative", 0)],
             "glue_mrpc": [("yes", 1), ("no", 0)], "glue_cola": [("yes", 1), ("no", 0)],
             "glue_rte": [("false", 0), ("true", 1)]}[task]
    for word, label in words:
        if word in answer:
            return label
    return -1


def plain_gold(task: str, row: dict) -> int:
    return int(row["answer"] if task == "glue_mmlu" else row["label"])


def plain_protocol(lm, data_dir: Path, task: str, count: int) -> list[int]:
    """Predicted class of rows 10 … 10+count−1, one greedy generate() call per item."""
    path = data_dir / "glue_eval" / f"{task.removeprefix('glue_')}.jsonl"
    with open(path, encoding="utf-8") as handle:  # lines end in \n only: texts hold U+2028
        rows = [json.loads(line) for line in handle][10:10 + count]
    predictions = []
    for row in rows:
        prompt, marker = plain_prompt(task, row)
        ids = torch.tensor([lm.encode(prompt, bos=True)])
        with torch.no_grad():
            output = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_length=ids.shape[1] + NEW_TOKENS,
                                       pad_token_id=lm.tokenizer.pad_token_id)
        text = lm.tokenizer.decode(output[0], skip_special_tokens=True)
        predictions.append(plain_answer(task, prompt, marker, text))
    return predictions


def plain_weighted_f1(gold: list[int], pred: list[int]) -> float:
    total = 0.0
    for label, support in Counter(gold).items():
        hits = sum(g == p == label for g, p in zip(gold, pred))
        predicted = sum(p == label for p in pred)
        total += support * (2 * hits / (predicted + support))
    return total / len(gold)


def plain_mcc(gold: list[int], pred: list[int]) -> float:
    labels = sorted(set(gold) | set(pred))
    n = len(gold)
    correct = sum(g == p for g, p in zip(gold, pred))
    t = [gold.count(k) for k in labels]
    p = [pred.count(k) for k in labels]
    numerator = correct * n - sum(a * b for a, b in zip(t, p))
    denominator = math.sqrt((n * n - sum(b * b for b in p)) * (n * n - sum(a * a for a in t)))
    return numerator / denominator if denominator else 0.0


# --------------------------------------------------------------------------- statistics


def _results(gold: list[int], pred: list[int]) -> list[ItemResult]:
    def metrics(g: int, p: int) -> dict[str, float]:
        values: dict[str, float] = {}
        for m in ("weighted_f1", "mcc"):
            values.update({m: float(g == p), f"{m}.pred": float(p), f"{m}.gold": float(g)})
        return values

    return [ItemResult(str(i), "", "", metrics(g, p)) for i, (g, p) in enumerate(zip(gold, pred))]


@pytest.mark.parametrize(("gold", "pred", "f1", "mcc"), [
    # Values scikit-learn's f1_score(average="weighted") and matthews_corrcoef give.
    ([0, 1, 1, 0, 1], [0, 1, -1, 1, 1], 0.6666666666666666, 0.3086066999241838),
    ([0, 0, 1, 1], [-1, -1, -1, -1], 0.0, 0.0),
    ([0, 1, 2, 3, 0, 1], [0, 1, 2, 0, -1, 3], 0.5555555555555555, 0.3706246583305506),
    ([1, 1, 1], [1, 1, 1], 1.0, 0.0),
])
def test_weighted_f1_and_mcc_match_scikit_learn(gold, pred, f1, mcc):
    results = _results(gold, pred)
    assert aggregate(results, "weighted_f1") == pytest.approx(f1, abs=1e-12)
    assert aggregate(results, "mcc") == pytest.approx(mcc, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-1, 3)), min_size=1, max_size=40))
def test_corpus_statistics_equal_their_definitions(pairs):
    gold, pred = [g for g, _ in pairs], [p for _, p in pairs]
    results = _results(gold, pred)
    assert aggregate(results, "weighted_f1") == pytest.approx(plain_weighted_f1(gold, pred))
    assert aggregate(results, "mcc") == pytest.approx(plain_mcc(gold, pred))


def test_the_f1_gate_is_paired_and_fails_on_a_collapse():
    rng = np.random.default_rng(0)
    gold = [int(g) for g in rng.integers(0, 2, 100)]
    right = _results(gold, gold)
    assert paired_gate("glue_sst2", "weighted_f1", right, right, 0.05).delta == 0
    collapsed = _results(gold, [-1] * 100)  # the edited model stops answering
    gate = paired_gate("glue_sst2", "weighted_f1", right, collapsed, 0.05)
    assert not gate.passed and gate.delta == pytest.approx(-1.0) and gate.ci_high < 0


# --------------------------------------------------------------------------- the protocol


def test_parsing_follows_the_harness():
    from editgate.registry import ABILITIES

    sst2, rte, mmlu = (ABILITIES.get(n)() for n in ("glue_sst2", "glue_rte", "glue_mmlu"))
    assert sst2.parse("Review :x\nSentiment :", " Positive!") == 1
    assert sst2.parse("Review :x\nSentiment :", " not negative, positive") == 1  # order
    assert sst2.parse("Review :x\nSentiment :", " meh") == -1
    assert rte.parse("a\nquestion: b True or False?\nanswer:", " true, not false") == 0
    assert mmlu.parse("Question: q\nAnswer:", " B\nBecause") == 1
    assert mmlu.parse("Question: q\nAnswer:", " (B)\n\n") == -1  # a letter, then a line break
    assert mmlu.parse("Question: q\nAnswer:", " B") == -1


def test_rte_labels_are_the_harness_s_unless_corrected(data_dir):
    from editgate.abilities.base import PromptStyle

    run = prepare("glue_rte", data_dir, "tiny-llama", get_profile("glue-eval"), 4)
    item = run.items[0]
    harness, corrected = PromptStyle(), PromptStyle(options={"labels": "corrected"})
    assert run.ability.gold(item, harness) == int(item["label"])
    assert run.ability.gold(item, corrected) == 1 - int(item["label"])
    assert "inverted" in run.ability.note(harness)


def test_profile_selects_the_harness_rows_in_order(data_dir):
    run = prepare("glue_sst2", data_dir, "tiny-llama", get_profile("glue-eval"))
    with open(data_dir / "glue_eval" / "sst2.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert [i.id for i in run.items] == [str(r["position"]) for r in rows[10:110]]
    assert run.style.shots == 0 and run.generation


@pytest.mark.parametrize("task", TASKS)
def test_profile_agrees_with_the_plain_protocol_on_a_tiny_model(task, data_dir):
    """Mechanics on a random model: the same prompts, ids, answers and parse, item by item."""
    from editgate.testing import tiny_model

    lm = tiny_model("llama", positions=1024)
    run = prepare(task, data_dir, lm.name, get_profile("glue-eval"), 6)
    results = evaluate(run, AbilityRunner(lm))
    assert [int(r.metrics["weighted_f1.pred"]) for r in results] == plain_protocol(
        lm, data_dir, task, 6)


@pytest.mark.real_model
@pytest.mark.parametrize("task", TASKS)
def test_profile_agrees_with_the_plain_protocol_on_smollm2(task, smollm2, data_dir):
    """Item by item on the packaged model (float32, as goldens are scored): every prediction,
    then weighted F1 and MCC."""
    count = 16
    run = prepare(task, data_dir, smollm2.name, get_profile("glue-eval"), count)
    results = evaluate(run, AbilityRunner(smollm2))
    expected = plain_protocol(smollm2, data_dir, task, count)
    assert [int(r.metrics["weighted_f1.pred"]) for r in results] == expected
    gold = [int(r.metrics["weighted_f1.gold"]) for r in results]
    assert aggregate(results, "weighted_f1") == pytest.approx(plain_weighted_f1(gold, expected))
    assert aggregate(results, "mcc") == pytest.approx(plain_mcc(gold, expected))


# --------------------------------------------------------------------------- the profile gates


@pytest.fixture
def suite(pytester, data_dir, tmp_path, monkeypatch):
    """A copy of ability_tests/ in a scratch rootdir, with its own cache."""
    import shutil

    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(Path(__file__).resolve().parent.parent / "ability_tests",
                    pytester.path / "ability_tests")
    pytester.makeconftest('pytest_plugins = ["editgate.plugin", "editgate.fixtures", '
                          '"editgate.report.plugin"]')
    pytester.makeini(f"[pytest]\neditgate_data_dir = {data_dir}\n"
                     "filterwarnings = ignore::pytest.PytestAssertRewriteWarning\n")
    return pytester



def test_data_set_names_select_tests(suite):
    """`-k sst2` selects every ability scored on SST-2, `-k "rome and rte"` ROME's RTE gates."""
    def ids(*args: str) -> str:
        result = suite.runpytest_subprocess("ability_tests", "--model", "tiny-llama", "--co", "-q",
                                            "--editors", "rome", "--regimes", "single", *args)
        return "\n".join(result.outlines)

    quick = ids("-k", "sst2")
    assert "sentiment" in quick and "nli" not in quick and "glue_sst2" not in quick
    assert "test_ability[rome-single-nli-accuracy]" in ids("-k", "rome and rte")
    for name, ability in (("gsm8k", "reasoning"), ("boolq", "closed_qa"), ("mutual", "dialogue"),
                          ("samsum", "summarization"), ("conll", "ner")):
        assert f"-{ability}-" in ids("--profile", "standard", "-k", name), name
    glue = ids("--profile", "glue-eval", "-k", "mmlu or mrpc")
    assert "glue_mmlu" in glue and "glue_mrpc" in glue and "glue_sst2" not in glue
    assert "glue_sst2" in ids("--profile", "glue-eval", "-k", "sst2")


def test_glue_eval_profile_gates_and_reports(suite):
    """The profile's abilities gate like any other; the summary prints the papers' table and the
    RTE note, the HTML report the F1-vs-edits figure."""
    result = suite.runpytest_subprocess(
        "ability_tests", "--model", "tiny-llama", "--profile", "glue-eval", "--limit", "4",
        "--editors", "rome", "--regimes", "single", "-k", "test_ability and (sst2 or rte)",
        "--hparam", "rome.steps=2", "--hparam", "rome.context_template_length_params=[[5, 1]]",
        "--hparam", "rome.mom2=False", "--hparam", "rome.layer=1",
        "--report-dir", str(suite.path / "reports"))
    result.assert_outcomes(passed=8)  # 2 tasks × (weighted_f1, mcc, answered, margin)
    result.stdout.fnmatch_lines(["*glue_eval · weighted F1 / MCC*", "*unedited*",
                                 "*note* glue_rte: scored against the harness's inverted*"])
    html = (suite.path / "reports" / "latest.html").read_text()
    assert 'id="glue-eval"' in html and "inverted RTE labels" in html
