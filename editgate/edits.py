"""Edit requests: the facts an editor is asked to rewrite, validated on load.

Two sources are supported, both read from the data directory:

* CounterFact (``counterfact/counterfact-edit.jsonl``, EasyEdit's reduced format): a prompt with
  the subject in it, the counterfactual ``target_new``, the ``ground_truth``, one paraphrase and
  one neighborhood prompt (whose answer is the true object).
* zsRE (``zsre/zsre_mend_eval_portability_gpt4.jsonl``): a question about the subject, ``alt`` as
  the new answer, ``answers[0]`` as the old one, a rephrased question and an NQ locality question
  (used verbatim: "nq question: …", as EasyEdit scores it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from editgate.data import DatasetSpec, Field, Record, check_unique, load_dataset
from editgate.errors import ConfigError, DataError


@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite: ``prompt`` (containing ``subject``) should now continue with ``target_new``."""

    case_id: str
    prompt: str
    subject: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    neighborhood_answer: str | None = None
    source: str = "<memory>"  # "file:line", for error messages
    kind: str = "counterfact"  # how edit success is scored: "counterfact" or "zsre"

    def __post_init__(self) -> None:
        for name in ("prompt", "subject", "target_new", "target_true"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DataError("must be a non-empty string", path=self.source, field=name)
        if self.subject not in self.prompt:
            raise DataError(f"subject {self.subject!r} does not occur in the prompt {self.prompt!r}",
                            path=self.source, field="subject")
        if self.target_new.strip() == self.target_true.strip():
            raise DataError("target_new equals the true target: nothing to edit",
                            path=self.source, field="target_new")

    @property
    def template(self) -> str:
        """The prompt with the (first) subject occurrence replaced by ``{}`` and braces escaped."""
        start = self.prompt.index(self.subject)
        before, after = self.prompt[:start], self.prompt[start + len(self.subject):]
        escape = lambda text: text.replace("{", "{{").replace("}", "}}")
        return escape(before) + "{}" + escape(after)


def _target(text: str) -> str:
    """Targets are continuations: they start with one space so they tokenise as a new word."""
    return " " + text.strip()


COUNTERFACT = DatasetSpec(
    folder="counterfact",
    filename="counterfact-edit.jsonl",
    schema=(
        Field("case_id", int),
        Field("prompt", str, nonempty=True),
        Field("subject", str, nonempty=True),
        Field("target_new", str, nonempty=True),
        Field("ground_truth", str, nonempty=True),
        Field("rephrase_prompt", str, required=False),
        Field("locality_prompt", str, required=False),
        Field("locality_ground_truth", str, required=False),
    ),
)

ZSRE = DatasetSpec(
    folder="zsre",
    filename="zsre_mend_eval_portability_gpt4.jsonl",
    schema=(
        Field("subject", str, nonempty=True),
        Field("src", str, nonempty=True),
        Field("alt", str, nonempty=True),
        Field("answers", list, nonempty=True),
        Field("rephrase", str, required=False),
        Field("loc", str, required=False),
        Field("loc_ans", str, required=False),
    ),
)


def _counterfact_request(record: Record) -> EditRequest:
    where = f"{record.path}:{record.line}"
    return EditRequest(
        case_id=f"cf-{record['case_id']}",
        prompt=record["prompt"],
        subject=record["subject"],
        target_new=_target(record["target_new"]),
        target_true=_target(record["ground_truth"]),
        paraphrase_prompts=tuple(p for p in [record.get("rephrase_prompt")] if p),
        neighborhood_prompts=tuple(p for p in [record.get("locality_prompt")] if p),
        neighborhood_answer=_target(record.get("locality_ground_truth") or record["ground_truth"]),
        source=where,
    )


def _zsre_request(record: Record) -> EditRequest:
    where = f"{record.path}:{record.line}"
    answers = record["answers"]
    if not isinstance(answers[0], str) or not answers[0].strip():
        raise record.error("first answer must be a non-empty string", field="answers")
    # Verbatim, "nq question: " prefix and all, as EasyEdit and MEND score zsRE locality.
    loc = record.get("loc") or ""
    return EditRequest(
        case_id=f"zsre-{record.line}",
        prompt=record["src"],
        subject=record["subject"],
        target_new=_target(record["alt"]),
        target_true=_target(answers[0]),
        paraphrase_prompts=tuple(p for p in [record.get("rephrase")] if p),
        neighborhood_prompts=(loc,) if loc else (),
        neighborhood_answer=_target(record["loc_ans"]) if record.get("loc_ans") else None,
        source=where,
        kind="zsre",
    )


EDIT_SOURCES = {"counterfact": (COUNTERFACT, _counterfact_request), "zsre": (ZSRE, _zsre_request)}


def load_edit_requests(source: str, data_dir: Path, count: int, *, skip_invalid: bool = False,
                       ) -> tuple[list[EditRequest], str]:
    """The first ``count`` requests of ``source`` and the source fingerprint.

    With ``skip_invalid`` (used for zsRE, whose subjects are not always verbatim in the question)
    unusable records are skipped instead of raising; malformed JSON or fields always raise.
    """
    if source not in EDIT_SOURCES:
        raise ConfigError(f"unknown edit source {source!r}; choose one of {sorted(EDIT_SOURCES)}")
    spec, convert = EDIT_SOURCES[source]
    dataset = load_dataset(spec, data_dir)
    if source == "counterfact":
        check_unique(dataset.records, lambda r: str(r["case_id"]), "case_id")
    requests: list[EditRequest] = []
    for record in dataset.records:
        if len(requests) >= count:
            break
        try:
            requests.append(convert(record))
        except DataError:
            if not skip_invalid:
                raise
    if len(requests) < count:
        raise DataError(f"only {len(requests)} usable edit requests, {count} asked for",
                        path=spec.local_path(data_dir))
    return requests, dataset.fingerprint


def read_edit_file(path: Path) -> list[EditRequest]:
    """User-supplied edits in CounterFact's reduced JSONL format (``--edits-file``)."""
    from editgate.data import check_unique, read_jsonl

    records = read_jsonl(path, COUNTERFACT.schema)
    check_unique(records, lambda r: str(r["case_id"]), "case_id")
    return [_counterfact_request(record) for record in records]
