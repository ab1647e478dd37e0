"""End-to-end claims that need the real model: edits take on SmolLM2-135M.

Each editor edits the first 20 CounterFact requests — one request per call for ROME, R-ROME and
FT-L, one batch of 20 for MEMIT and AlphaEdit — and the new target must beat the true one on at
least 18 of the 20 edit prompts. To keep ``pytest tests`` within minutes on two CPU cores the
value optimisation uses 2 prefixed prompts instead of 10 (everything else as shipped in
editors/hparams; the shipped settings are measured in benchmarks/test_bench_editors.py), and the
deltas are cached under a digest of the editors' source code, so a rerun without code changes
only re-scores them. KN and MEND are not expected to reach 0.9 here (see the README); their
tests check that the edit moves the model toward the new target.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from editgate.cache import cache_key, cache_path, get_or_compute
from editgate.delta import WeightDelta
from editgate.edit_success import edit_success, success_rate
from editgate.editors.base import EditContext
from editgate.edits import load_edit_requests
from editgate.models import weights_digest
from editgate.registry import EDITORS
from editgate.runner import AbilityRunner, Choices

pytestmark = pytest.mark.real_model

N_REQUESTS = 20
# Of the v*/z optimisation: the plain prompt and 2 prefixes instead of ROME's 20 (MEMIT's 5).
CHEAP = {"context_template_length_params": ((10, 2),)}
EFFICACY = {  # editor → (requests per call, hparam overrides)
    "rome": (1, CHEAP),
    "r-rome": (1, CHEAP),
    "memit": (N_REQUESTS, CHEAP),
    "alphaedit": (N_REQUESTS, CHEAP),
    "ft-l": (1, {}),
}


def _source_digest() -> str:
    """Digest of every file an edit depends on: a code change invalidates the cached deltas."""
    import editgate
    import editgate.editors

    files = sorted(Path(editgate.editors.__file__).parent.rglob("*.py")) + sorted(
        Path(editgate.editors.__file__).parent.rglob("*.toml"))
    files += [Path(editgate.__file__).parent / name for name in ("stats.py", "delta.py")]
    sha = hashlib.sha256()
    for path in files:
        sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


def edited_deltas(lm, data_dir, name: str, batch: int, overrides: dict, requests,
                  ) -> list[WeightDelta]:
    """The editor's deltas for ``requests`` in calls of ``batch``, computed once per code state."""
    editor = EDITORS.get(name)()
    hp = editor.hparams(lm, overrides)
    deltas = []
    for first in range(0, len(requests), batch):
        chunk = requests[first:first + batch]
        path = cache_path("test-deltas", cache_key(
            source=_source_digest(), model=lm.fingerprint, editor=name,
            hparams=dataclasses.asdict(hp), requests=[dataclasses.astuple(r) for r in chunk]),
            ".safetensors")
        deltas.append(get_or_compute(
            path, lambda chunk=chunk: editor.edit(EditContext(lm, data_dir), chunk, hp),
            save=lambda delta, tmp: delta.save(tmp), load=WeightDelta.load))
    return deltas


def _outcomes(lm, requests, deltas, batch: int) -> dict[str, list]:
    runner = AbilityRunner(lm)
    results: dict[str, list] = {}
    for index, delta in enumerate(deltas):
        chunk = requests[index * batch:(index + 1) * batch]
        before = weights_digest(lm.model, sorted(delta.updates))
        with delta.applied(lm.model):
            for metric, items in edit_success(runner, chunk).items():
                results.setdefault(metric, []).extend(items)
        assert weights_digest(lm.model, sorted(delta.updates)) == before  # reverted bit-exactly
    return results


@pytest.mark.parametrize("name", sorted(EFFICACY))
def test_edits_take_on_smollm2(smollm2, data_dir, name):
    """20 CounterFact requests: the new target beats the true one on ≥ 18 edit prompts."""
    requests, _ = load_edit_requests("counterfact", data_dir, N_REQUESTS)
    batch, overrides = EFFICACY[name]
    deltas = edited_deltas(smollm2, data_dir, name, batch, overrides, requests)
    results = _outcomes(smollm2, requests, deltas, batch)
    efficacy = success_rate(results["efficacy"])
    failed = [r.item_id for r in results["efficacy"] if r.metrics["success"] < 1]
    assert efficacy >= 0.9, f"{name}: efficacy {efficacy:.2f}; failed {failed}"


# KN as EasyEdit has it (the default) raised log P(new) on 1 of these 5 requests on SmolLM2: its
# edit adds e(new) − 2·e(predicted) to the attributed neurons' values, and at IG α = 0 (its LLaMA
# config) the neurons it finds barely carry the answer. That is the published method's weakness,
# reported in the README, not a defect to test away; the gain is tested on the paper's rule.
KN_PAPER_RULE = {"prompts": 3, "first_token_only": True, "edit_rule": "scaled", "site": "key"}


@pytest.mark.parametrize(("name", "overrides"), [("kn", KN_PAPER_RULE), ("mend", {})],
                         ids=["kn-paper-rule", "mend"])
def test_weak_editors_move_the_target(smollm2, data_dir, name, overrides):
    """KN and MEND need not reach 0.9, but each edit must raise P(new) against P(true)."""
    requests, _ = load_edit_requests("counterfact", data_dir, 5)
    deltas = edited_deltas(smollm2, data_dir, name, 1, overrides, requests)
    runner = AbilityRunner(smollm2)
    probes = [Choices(r.prompt, (r.target_new, r.target_true)) for r in requests]

    def margins() -> torch.Tensor:  # mean log P(new) − mean log P(true), per request
        return torch.tensor([s.mean_logprobs[0] - s.mean_logprobs[1]
                             for s in runner.loglikelihood(probes)])

    before = margins()
    after = []
    for index, delta in enumerate(deltas):
        with delta.applied(smollm2.model):
            after.append(margins()[index])
    gained = torch.stack(after) - before
    assert (gained > 0).sum() >= 4, f"{name}: margin changes {gained.tolist()}"
