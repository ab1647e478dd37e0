"""Verdicts that reproduce: caches never serve a result computed by other code or kernels, and
reduced precision never crashes where a kernel is missing.

The end-to-end cases run the gate suite in subprocesses on a tiny random model with a
third-party plugin (one ability, one editor) installed from a temporary folder, and count the
files each run adds to the cache: a file appears exactly when its key — and so its value — is new.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from editgate.fingerprint import code_fingerprint, compute_environment
from editgate.runner import AbilityRunner

ROOT = Path(__file__).resolve().parent.parent

ABILITY = '''
from editgate.abilities.base import Classification
from editgate.data import DatasetSpec, Field


class DemoSentiment(Classification):
    name = "demo_sentiment"
    title = "Sentiment, prompted the plugin's way"
    dataset = DatasetSpec(folder="sst2", filename="validation.jsonl",
                          schema=(Field("idx", int), Field("sentence", str), Field("label", int)))
    labels = ("negative", "positive")

    def example(self, item):
        return f"Review: {item['sentence'].strip()}" + PROMPT_END

    def gold(self, item):
        return int(item["label"])

    def content_free(self):
        return self.example({"sentence": "N/A"})
'''

EDITOR = '''
from dataclasses import dataclass

import torch

from editgate.delta import WeightDelta
from editgate.editors.base import Editor


@dataclass(frozen=True)
class NudgeHParams:
    layer: int = 0


class Nudge(Editor):
    """Adds a constant to one MLP output projection: the simplest editor there is."""

    name = "demo-nudge"
    HParams = NudgeHParams

    def edit(self, ctx, requests, hp):
        name = ctx.lm.layout.weight_name(hp.layer)
        weight = dict(ctx.lm.model.named_parameters())[name]
        return WeightDelta({name: torch.full(weight.shape, SCALE)})
'''


def write_plugin(root: Path, prompt_end: str, scale: float) -> None:
    """A plugin package installed the way pip would: the package plus its dist-info with the
    entry points (found through PYTHONPATH)."""
    package = root / "editgate_demo"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "ability.py").write_text(ABILITY.replace("PROMPT_END", repr(prompt_end)))
    (package / "editor.py").write_text(EDITOR.replace("SCALE", repr(scale)))
    info = root / "editgate_demo-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: editgate-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [editgate.abilities]
        demo_sentiment = editgate_demo.ability:DemoSentiment
        [editgate.editors]
        demo-nudge = editgate_demo.editor:Nudge
        """))


@pytest.fixture
def project(tmp_path: Path, data_dir: Path) -> Path:
    """A scratch rootdir with a copy of ability_tests/ and the plugin beside it."""
    shutil.copytree(ROOT / "ability_tests", tmp_path / "ability_tests")
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["editgate.plugin", "editgate.fixtures"]\n')
    (tmp_path / "pytest.ini").write_text(f"[pytest]\neditgate_data_dir = {data_dir}\n")
    write_plugin(tmp_path / "site", "\nSentiment:", 1e-3)
    return tmp_path


def run_gate(project: Path, **env: str) -> dict[str, int]:
    """One gate run of the plugin's editor on the plugin's ability; the cache files it added."""
    cache = project / "cache"
    before = {kind: _files(cache / kind) for kind in ("results", "deltas")}
    command = [sys.executable, "-m", "pytest", "ability_tests", "-p", "no:cacheprovider",
               "--model", "tiny-llama", "--abilities", "demo_sentiment", "--editors",
               "demo-nudge", "--regimes", "single", "--limit", "6", "-k", "test_ability", "-q"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, env={
        **os.environ, "EDITGATE_CACHE_DIR": str(cache), **env,
        "PYTHONPATH": os.pathsep.join([str(project / "site"), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {kind: _files(cache / kind) - count for kind, count in before.items()}


def _files(folder: Path) -> int:
    return sum(1 for p in folder.glob("*") if p.suffix in (".json", ".safetensors"))


def test_code_and_kernel_changes_recompute_never_serve_stale(project):
    """A third-party ability and editor: a rerun is served from the cache; a changed prompt
    rescores both states (the delta is kept); changed editor code recomputes the delta and the
    edited state; another CPU capability recomputes everything."""
    assert run_gate(project) == {"results": 2, "deltas": 1}  # baseline + edited, one delta
    assert run_gate(project) == {"results": 0, "deltas": 0}
    write_plugin(project / "site", "\nThe sentiment is:", 1e-3)
    assert run_gate(project) == {"results": 2, "deltas": 0}
    write_plugin(project / "site", "\nThe sentiment is:", 2e-3)
    assert run_gate(project) == {"results": 1, "deltas": 1}
    assert run_gate(project, ATEN_CPU_CAPABILITY="avx2") == {"results": 2, "deltas": 1}


def test_code_fingerprint_follows_imports(tmp_path, monkeypatch):
    """Editing a module the object imports (not only its own file) changes the fingerprint."""
    package = tmp_path / "fp_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("SCALE = 1\n")
    (package / "thing.py").write_text("from fp_demo.helper import SCALE\n\n\n"
                                      "def thing():\n    return SCALE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from fp_demo.thing import thing

    before = code_fingerprint(thing)
    assert code_fingerprint(thing) == before
    (package / "helper.py").write_text("SCALE = 2  # changed\n")
    assert code_fingerprint(thing) != before


def test_environment_names_the_kernels():
    """The results key sees what picks the kernels: ATen's capability among them."""
    env = compute_environment("cpu")
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {"device", "torch", "transformers", "threads", "cpu_features"} <= set(env)
    capped = subprocess.run(
        [sys.executable, "-c", "from editgate.fingerprint import compute_environment as c; "
                               "print(c('cpu')['cpu_capability'])"],
        capture_output=True, text=True, env={**os.environ, "ATEN_CPU_CAPABILITY": "default"},
        check=True)
    assert capped.stdout.strip() == "DEFAULT" != env["cpu_capability"]


def _sdpa_without_bf16_flash(monkeypatch, *, math_works: bool) -> None:
    """SDPA as on an AMX CPU with ATen capped at AVX2: bf16 attention raises unless only the
    math backend is enabled (or always, with ``math_works=False``)."""
    real = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, *args, **kwargs):
        # Under autocast SDPA runs in bf16 whatever its inputs (RoPE leaves them float32).
        in_bf16 = query.dtype == torch.bfloat16 or (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        if in_bf16 and (not math_works or torch.backends.cuda.flash_sdp_enabled()):
            raise RuntimeError("pack_vnni2 is only supported when avx512 is supported")
        return real(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)


@pytest.fixture
def sdpa_llama():
    from editgate.testing import tiny_model

    lm = tiny_model("llama")
    lm.model.config._attn_implementation = "sdpa"
    return lm


def test_missing_bf16_attention_kernel_falls_back_to_math(sdpa_llama, monkeypatch):
    """The runner probes bf16 once, falls back to SDPA's math backend, scores like float32
    within bf16 rounding, and keys its results apart from runs that needed no fallback."""
    from editgate.runner import Choices

    plain = AbilityRunner(sdpa_llama, eval_dtype="bfloat16")
    assert plain.attention_fallback is None
    _sdpa_without_bf16_flash(monkeypatch, math_works=True)
    runner = AbilityRunner(sdpa_llama, eval_dtype="bfloat16")
    assert runner.attention_fallback == "math"
    assert runner.fingerprint != plain.fingerprint
    request = Choices("The weather today is", (" sunny", " rainy"))
    with runner.precision():
        scores = runner.loglikelihood([request])[0].logprobs
    exact = AbilityRunner(sdpa_llama).loglikelihood([request])[0].logprobs
    assert scores == pytest.approx(exact, abs=0.1)


def test_no_bf16_kernel_at_all_names_the_float32_option(sdpa_llama, monkeypatch):
    from editgate.errors import KernelUnavailable

    _sdpa_without_bf16_flash(monkeypatch, math_works=False)
    with pytest.raises(KernelUnavailable, match="--eval-dtype float32"):
        AbilityRunner(sdpa_llama, eval_dtype="bfloat16")
