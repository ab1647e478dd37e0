"""A corpus of bad inputs: each ends in one clear message naming file, line and field (or the
option), a non-zero exit, no traceback — and nothing half-written.

Three layers: edit-request files and task data (DataError), tolerance files and options
(ConfigError / pytest usage errors), and a hypothesis fuzz of edit records that must only ever
produce a valid request or a DataError.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editgate.data import read_jsonl
from editgate.edits import COUNTERFACT, EditRequest, read_edit_file
from editgate.errors import ConfigError, DataError
from editgate.gate import Tolerances

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent

GOOD = {"case_id": 1, "prompt": "The mother tongue of Danielle Darrieux is",
        "subject": "Danielle Darrieux", "target_new": "English", "ground_truth": "French"}
NFD_CAFE = unicodedata.normalize("NFD", "Café")

# (second line of the file, expected fragment of the message, field named or None)
BAD_EDIT_LINES = [
    ("{", "not valid JSON", None),
    ('{"case_id": 2,}', "not valid JSON", None),
    ("[]", "expected a JSON object", None),
    ("42", "expected a JSON object", None),
    ('"just a string"', "expected a JSON object", None),
    ("null", "expected a JSON object", None),
    (json.dumps({**GOOD, "case_id": 2}) + " trailing", "not valid JSON", None),
    ("{}", "missing", "case_id"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "prompt"} | {"case_id": 2}), "missing",
     "prompt"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "target_new"} | {"case_id": 2}),
     "missing", "target_new"),
    (json.dumps({**GOOD, "case_id": "2"}), "expected int", "case_id"),
    (json.dumps({**GOOD, "case_id": 2.5}), "expected int", "case_id"),
    (json.dumps({**GOOD, "case_id": None}), "expected int", "case_id"),
    (json.dumps({**GOOD, "case_id": False}), "expected int", "case_id"),
    (json.dumps({**GOOD, "case_id": 2, "prompt": 7}), "expected str", "prompt"),
    (json.dumps({**GOOD, "case_id": 2, "subject": ["Danielle"]}), "expected str", "subject"),
    (json.dumps({**GOOD, "case_id": 2, "target_new": {"t": "English"}}), "expected str",
     "target_new"),
    (json.dumps({**GOOD, "case_id": 2, "target_new": ""}), "must not be empty", "target_new"),
    (json.dumps({**GOOD, "case_id": 2, "target_new": " \t "}), "must not be empty", "target_new"),
    (json.dumps({**GOOD, "case_id": 2, "ground_truth": ""}), "must not be empty", "ground_truth"),
    (json.dumps({**GOOD, "case_id": 2, "prompt": ""}), "must not be empty", "prompt"),
    (json.dumps({**GOOD, "case_id": 2, "subject": "Marie Curie"}), "does not occur", "subject"),
    (json.dumps({**GOOD, "case_id": 2, "subject": "danielle darrieux"}), "does not occur",
     "subject"),
    # Unicode oddities: look-alike subjects that are not the same code points.
    (json.dumps({**GOOD, "case_id": 2, "prompt": "Café is in", "subject": NFD_CAFE}),
     "does not occur", "subject"),
    (json.dumps({**GOOD, "case_id": 2, "subject": "Danielle\u200bDarrieux"}), "does not occur",
     "subject"),
    (json.dumps({**GOOD, "case_id": 2, "subject": "Danielle\u00a0Darrieux"}), "does not occur",
     "subject"),
    (json.dumps({**GOOD, "case_id": 2, "target_new": "French"}), "nothing to edit", "target_new"),
    (json.dumps({**GOOD, "case_id": 2, "target_new": " French "}), "nothing to edit",
     "target_new"),
    (json.dumps({**GOOD, "case_id": 1}), "duplicate id '1'", "case_id"),
    (json.dumps({**GOOD, "case_id": 2, "rephrase_prompt": 3}), "expected str", "rephrase_prompt"),
    (json.dumps({**GOOD, "case_id": 2, "locality_prompt": ["x"]}), "expected str",
     "locality_prompt"),
]


def _edit_file(tmp_path: Path, second_line: str | bytes) -> Path:
    path = tmp_path / "edits.jsonl"
    second = second_line if isinstance(second_line, bytes) else second_line.encode()
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + second + b"\n")
    return path


@pytest.mark.parametrize(("line", "message", "field"), BAD_EDIT_LINES)
def test_bad_edit_lines(tmp_path, line, message, field):
    path = _edit_file(tmp_path, line)
    with pytest.raises(DataError) as info:
        read_edit_file(path)
    text = str(info.value)
    assert text.startswith(f"{path}:2: "), text
    assert message in text
    if field is not None:
        assert f"field '{field}'" in text


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"case_id": 2, "prompt": "caf\xe9"}', "not valid UTF-8"),
    (b"\x00\x00", "not valid JSON"),
])
def test_undecodable_lines(tmp_path, raw, message):
    path = _edit_file(tmp_path, raw)
    with pytest.raises(DataError, match=f"edits.jsonl:2: {message}"):
        read_edit_file(path)


def test_byte_order_mark_and_blank_lines_are_fine(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n\n   \n")
    (request,) = read_edit_file(path)
    assert request.case_id == "cf-1"


def test_empty_and_missing_edit_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="holds no records"):
        read_edit_file(empty)
    with pytest.raises(DataError, match="file not found"):
        read_edit_file(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="file not found"):
        read_edit_file(tmp_path)  # a directory is not a file


@settings(max_examples=200, deadline=None)
@given(record=st.fixed_dictionaries(
    {}, optional={
        "case_id": st.one_of(st.integers(), st.text(max_size=3), st.none(), st.booleans()),
        "prompt": st.one_of(st.text(max_size=30), st.integers()),
        "subject": st.one_of(st.text(max_size=10), st.lists(st.text(max_size=3))),
        "target_new": st.one_of(st.text(max_size=10), st.none()),
        "ground_truth": st.text(max_size=10),
        "rephrase_prompt": st.one_of(st.text(max_size=10), st.floats()),
    }))
def test_fuzzed_records_give_a_request_or_a_located_error(tmp_path_factory, record):
    path = tmp_path_factory.mktemp("fuzz") / "edits.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    try:
        requests = read_edit_file(path)
    except DataError as exc:
        assert str(exc).startswith(f"{path}:1: ")
    else:
        assert len(requests) == 1 and isinstance(requests[0], EditRequest)
        assert requests[0].subject in requests[0].prompt


@settings(max_examples=100, deadline=None)
@given(line=st.text(max_size=40))
def test_fuzzed_lines_never_crash_the_reader(tmp_path_factory, line):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line.replace("\n", " ") + "\n", encoding="utf-8")
    try:
        read_jsonl(path, COUNTERFACT.schema)
    except DataError as exc:
        assert f"{path}:2" in str(exc)


BAD_TOLERANCE_FILES = [
    ("[default]\naccuracy = -0.1\n", "expected a number ≥ 0"),
    ("[default]\naccuracy = 'five'\n", "expected a number ≥ 0"),
    ("[default]\naccuracy = true\n", "expected a number ≥ 0"),
    ("default = 3\n", "must be a table"),
    ("[default\naccuracy = 1\n", "invalid TOML"),
    ("[edit_success.zsre]\nefficacy = -1\n", "expected a number ≥ 0"),
]


@pytest.mark.parametrize(("content", "message"), BAD_TOLERANCE_FILES)
def test_bad_tolerance_files(tmp_path, content, message):
    path = tmp_path / "tolerances.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Tolerances.load(path)


# ------------------------------------------------------------------ end to end through pytest

BAD_OPTIONS = [
    (["--editors", "nope"], "unknown editor 'nope'"),
    (["--abilities", "juggling"], "unknown ability 'juggling'"),
    (["--regimes", "double"], "unknown regime 'double'"),
    (["--regimes", "sequential-0"], "sizes must be"),
    (["--regimes", "batch-3-sequential-10"], "do not split into batches of 3"),
    (["--profile", "huge"], "unknown profile 'huge'"),
    (["--checkpoints", "1,x"], "--checkpoints '1,x': expected integers"),
    (["--limit", "0"], "--limit 0: must be at least 1"),
    (["--tolerance", "sentiment.accuracy"], "--tolerance 'sentiment.accuracy'"),
    (["--tolerance", "sentiment.accuracy=-1"], "--tolerance"),
    (["--hparam", "rome.layer"], "--hparam 'rome.layer': expected EDITOR.KEY=VALUE"),
    (["--hparam", "rome.nope=1"], "unknown hyper-parameter"),
    (["--hparam", "rome.layer='x'"], "expected int, got str"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["--eval-dtype", "fp8"], "unknown --eval-dtype 'fp8'"),
    (["--generation-dtype", "int4"], "unknown --generation-dtype 'int4'"),
    (["--device", "gpu7"], "unknown device 'gpu7'"),
    (["--model", "/"], "is not a transformers model directory"),
    (["--model", "./no/such/model"], "unknown model"),
    (["--model", "tiny-rnn"], "unknown tiny model"),
    (["--data-dir", "/no/such/dir"], "data directory does not exist"),
    (["--edit-source", "wiki"], "unknown edit source 'wiki'"),
    (["--edits-file", "/no/such/edits.jsonl"], "file not found"),
    (["--tolerances-file", "/no/such/tol.toml"], "tolerance file not found"),
]


@pytest.fixture
def suite(pytester, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(ROOT / "ability_tests", pytester.path / "ability_tests")
    pytester.makeconftest('pytest_plugins = ["editgate.plugin", "editgate.fixtures"]')
    pytester.makeini(f"[pytest]\neditgate_data_dir = {data_dir}\n")
    return pytester


def _assert_clean_usage_error(result, message: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *{message}*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize(("args", "message"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_stop_before_collection(suite, args, message):
    # In-process: these fail at configure time, before any model code is imported.
    result = suite.runpytest("ability_tests", "--model", "tiny-llama", *args) \
        if "--model" not in args else suite.runpytest("ability_tests", *args)
    _assert_clean_usage_error(result, message)


def _data_copy(data_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    copy.mkdir()
    for entry in data_dir.iterdir():
        (copy / entry.name).symlink_to(entry)
    return copy


@pytest.mark.parametrize(("line", "message"), [
    ('{"idx": 1, "sentence": "fine", "label": "positive"}', "field 'label': expected int"),
    ('{"idx": 1, "sentence": "", "label": 1}', "field 'sentence': must not be empty"),
    ('{"idx": 1, "label": 1}', "field 'sentence': missing"),
    ("not json", "not valid JSON"),
])
def test_corrupted_task_data_is_named_by_file_and_line(suite, data_dir, tmp_path, line, message):
    data = _data_copy(data_dir, tmp_path)
    (data / "sst2").unlink()
    (data / "sst2").mkdir()
    good = (data_dir / "sst2" / "validation.jsonl").read_text().splitlines()[:5]
    (data / "sst2" / "validation.jsonl").write_text("\n".join([*good[:2], line, *good[2:]]) + "\n")
    result = suite.runpytest("ability_tests", "--model", "tiny-llama", "--abilities", "sentiment",
                             "--data-dir", str(data))
    _assert_clean_usage_error(result, f"sst2/validation.jsonl:3: {message}")


def test_bad_edits_file_through_the_suite(suite, tmp_path):
    path = _edit_file(tmp_path, json.dumps({**GOOD, "case_id": 2, "subject": "Marie Curie"}))
    result = suite.runpytest("ability_tests", "--model", "tiny-llama", "--edits-file", str(path))
    _assert_clean_usage_error(result, "edits.jsonl:2: field 'subject': subject 'Marie Curie' "
                                      "does not occur")


def test_model_too_large_for_memory_is_refused_with_advice(tmp_path):
    from editgate.errors import ModelLoadError
    from editgate.models import validate_model_spec

    (tmp_path / "config.json").write_text('{"model_type": "llama", "torch_dtype": "float32"}')
    with open(tmp_path / "model.safetensors", "wb") as handle:
        handle.truncate(1 << 40)  # a sparse 1 TiB "checkpoint": takes no disk
    with pytest.raises(ModelLoadError, match=r"needs about .* GiB .* try --dtype bfloat16"):
        validate_model_spec(str(tmp_path), "cpu", "float32")


def test_chat_prompt_without_a_chat_template_names_the_config(tiny, monkeypatch):
    """A GGUF conversion can drop the chat template: a chat prompt must say what to change."""
    from editgate.errors import ConfigError

    monkeypatch.setattr(tiny.tokenizer, "chat_template", None)
    assert not tiny.has_chat_template
    with pytest.raises(ConfigError, match=r"no chat template.*prompts\.toml"):
        tiny.chat("Is this review positive?")
