"""Bad input gets one clear error naming file, line and field."""

from __future__ import annotations

import json

import pytest

from editgate.data import DatasetSpec, Field, HubSource, load_dataset, read_jsonl, resolve_data_dir
from editgate.edits import EditRequest, load_edit_requests, read_edit_file
from editgate.errors import DataError

GOOD = {"case_id": 7, "prompt": "The mother tongue of Danielle Darrieux is",
        "subject": "Danielle Darrieux", "target_new": "English", "ground_truth": "French",
        "rephrase_prompt": "Danielle Darrieux speaks", "locality_prompt": "Michel Rocard speaks",
        "locality_ground_truth": "French"}


def _write(tmp_path, records):
    path = tmp_path / "edits.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_good_edit_file(tmp_path):
    (request,) = read_edit_file(_write(tmp_path, [GOOD]))
    assert request.target_new == " English" and request.target_true == " French"
    assert request.template == "The mother tongue of {} is"
    assert request.paraphrase_prompts == ("Danielle Darrieux speaks",)


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"subject": "Marie Curie"}, "subject", "does not occur in the prompt"),
    ({"target_new": ""}, "target_new", "must not be empty"),
    ({"target_new": "   "}, "target_new", "must not be empty"),
    ({"ground_truth": 3}, "ground_truth", "expected str"),
    ({"case_id": "seven"}, "case_id", "expected int"),
    ({"case_id": True}, "case_id", "expected int"),
    ({"target_new": "French"}, "target_new", "nothing to edit"),
])
def test_bad_edit_record_names_file_line_field(tmp_path, change, field, message):
    path = _write(tmp_path, [GOOD, {**GOOD, "case_id": 8, **change}])
    with pytest.raises(DataError, match=message) as info:
        read_edit_file(path)
    assert f"{path}:2" in str(info.value)
    assert f"field '{field}'" in str(info.value)


def test_missing_field(tmp_path):
    record = dict(GOOD)
    del record["subject"]
    path = _write(tmp_path, [record])
    with pytest.raises(DataError, match=r"edits.jsonl:1: field 'subject': missing"):
        read_edit_file(path)


@pytest.mark.parametrize("line", ["{not json", "[1, 2]", '"a string"'])
def test_malformed_line(tmp_path, line):
    path = _write(tmp_path, [GOOD, GOOD, line])
    with pytest.raises(DataError, match=r"edits.jsonl:3: "):
        read_edit_file(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="holds no records"):
        read_jsonl(empty)
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_edit_request_validates_in_code_too():
    with pytest.raises(DataError, match="does not occur"):
        EditRequest("x", "Paris is in", "Lyon", " Italy", " France")
    request = EditRequest("x", "What is {weird} about Lyon? It is", "Lyon", " a", " b")
    assert request.template.format("Lyon") == request.prompt


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("EDITGATE_DATA_DIR", raising=False)
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    with pytest.raises(DataError, match="data directory does not exist"):
        resolve_data_dir(str(tmp_path / "nope"))
    monkeypatch.setenv("EDITGATE_DATA_DIR", str(tmp_path))
    assert resolve_data_dir("ignored/when/env/is/set") == tmp_path


def test_missing_local_file_offline_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGATE_OFFLINE", "1")
    spec = DatasetSpec("sst2", "validation.jsonl", (Field("sentence", str),),
                       hub=HubSource("nyu-mll/glue", "validation", name="sst2"))
    with pytest.raises(DataError, match="offline"):
        load_dataset(spec, tmp_path)


def test_real_counterfact_and_zsre_load(data_dir):
    requests, fingerprint = load_edit_requests("counterfact", data_dir, 20)
    assert len(requests) == 20 and len(fingerprint) == 64
    assert all(r.subject in r.prompt for r in requests)
    zsre, _ = load_edit_requests("zsre", data_dir, 10, skip_invalid=True)
    assert len(zsre) == 10 and all(r.subject in r.prompt for r in zsre)
