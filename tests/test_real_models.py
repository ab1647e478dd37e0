"""End-to-end claims that need the real model: edits take on SmolLM2-135M."""

from __future__ import annotations

import pytest
from editgate.editors.base import EditContext
from editgate.editors.rome import ROME

from editgate.edit_success import edit_success, success_rate
from editgate.edits import load_edit_requests
from editgate.models import param_digests
from editgate.runner import AbilityRunner

pytestmark = pytest.mark.real_model


def test_rome_edits_take_on_smollm2(smollm2, data_dir):
    """Each of 10 CounterFact requests, edited independently: the new target must win ≥ 9 times."""
    requests, _ = load_edit_requests("counterfact", data_dir, 10)
    runner = AbilityRunner(smollm2)
    editor = ROME()
    hparams = editor.hparams(smollm2)
    before = param_digests(smollm2.model)
    wins = []
    for request in requests:
        delta = editor.edit(EditContext(smollm2, data_dir), [request], hparams)
        with delta.applied(smollm2.model):
            wins.extend(edit_success(runner, [request])["efficacy"])
        assert param_digests(smollm2.model) == before
    assert sum(w.metrics["success"] for w in wins) >= 9, [w.item_id for w in wins]
    assert success_rate(wins) >= 0.9
