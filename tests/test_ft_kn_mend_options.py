"""FT-L / FT-M objectives and the named options of KN and MEND, on tiny random models.

Agreement with the published implementations is in tests/test_reference_ft_kn_mend.py; these
check what the references do not cover: the objectives' target positions, the stopping rule, and
that each named (non-reference) option does what its name says.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from editgate.editors.base import EditContext
from editgate.editors.ft_l import prompt_last_targets
from editgate.editors.ft_m import teacher_forced_targets
from editgate.editors.mend import edited_weights
from editgate.edits import EditRequest
from editgate.registry import EDITORS
from editgate.testing import tiny_model

REQUEST = EditRequest("t-1", "The mother tongue of Danielle Darrieux is", "Danielle Darrieux",
                      " English", " French")


def test_ft_objectives_score_the_reference_positions():
    lm = tiny_model("llama")
    prompt, target = lm.encode(REQUEST.prompt, bos=True), lm.encode(REQUEST.target_new)
    assert len(target) > 1  # the case where the two objectives differ
    batch, targets = prompt_last_targets(lm, [REQUEST])
    assert batch.ids[0].tolist() == prompt
    assert targets == [(0, len(prompt) - 1, t) for t in target]  # all at the last prompt position
    batch, targets = teacher_forced_targets(lm, [REQUEST])
    assert batch.ids[0].tolist() == prompt + target[:-1]
    assert targets == [(0, len(prompt) - 1 + i, t) for i, t in enumerate(target)]


@pytest.mark.parametrize("name", ["ft-l", "ft-m"])
def test_fine_tuning_takes_no_step_below_the_stop_loss(name):
    lm = tiny_model("gpt2")
    editor = EDITORS.get(name)()
    hp = dataclasses.replace(editor.hparams(lm), layer=1, steps=3, stop_loss=1e9)
    delta = editor.edit(EditContext(lm, Path(".")), [REQUEST], hp)
    assert all(torch.count_nonzero(delta.dense(p)) == 0 for p in delta.updates)
    hp = dataclasses.replace(hp, stop_loss=0.0)
    assert EDITORS.get(name)().edit(EditContext(lm, Path(".")), [REQUEST], hp).norm() > 0


def test_kn_former_rule_as_named_options():
    """editgate v1's rule: three prompts, first token, +8 e_new − 1 e_true signed, key site."""
    lm = tiny_model("llama")
    editor = EDITORS.get("kn")()
    hp = dataclasses.replace(editor.hparams(lm), layers=(1, 2, 3), ig_steps=4, prompts=3,
                             context_length=3, first_token_only=True, edit_rule="scaled",
                             site="key")
    delta = editor.edit(EditContext(lm, Path(".")), [REQUEST], hp)
    embeddings = lm.model.get_input_embeddings().weight.detach()
    direction = 8 * embeddings[lm.encode(" English")[0]] - embeddings[lm.encode(" French")[0]]
    for param in delta.updates:
        dense = delta.dense(param)
        columns = torch.nonzero(dense.abs().sum(0)).flatten()
        for column in columns:  # every edited value vector moved by ±direction
            assert torch.allclose(dense[:, column].abs(), direction.abs(), atol=1e-5)


def test_kn_rejects_unknown_option_values():
    from editgate.errors import ConfigError

    lm = tiny_model("llama")
    editor = EDITORS.get("kn")()
    hp = dataclasses.replace(editor.hparams(lm), site="post")
    with pytest.raises(ConfigError):
        editor.edit(EditContext(lm, Path(".")), [REQUEST], hp)


@pytest.mark.parametrize(("arch", "per_layer"), [("gpt2", 2), ("llama", 3)])
def test_mend_edits_every_mlp_projection_or_only_the_output(arch, per_layer):
    lm = tiny_model(arch)
    editor = EDITORS.get("mend")()
    hp = dataclasses.replace(editor.hparams(lm), layers=(2, 3))
    assert len(edited_weights(lm, hp)) == 2 * per_layer
    out_only = edited_weights(lm, dataclasses.replace(hp, params="out"))
    assert out_only == [lm.layout.weight_name(2), lm.layout.weight_name(3)]
