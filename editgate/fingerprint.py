"""Fingerprints of what computes a cached value: the code that ran, and the kernels it ran on.

A cache key must change whenever the value behind it could (DESIGN: "keyed by everything they
depend on"). Two of those dependencies are easy to forget because nobody types them:

* **the code** — :func:`code_fingerprint` hashes the source of an object's module and of every
  module it imports from its own package and from editgate, transitively. Editing an editor, an
  ability's prompt or the runner changes the fingerprint, so a stale delta or score is never
  served and no hand-bumped version number is needed for correctness.
* **the kernels** — :func:`compute_environment` names what picks the numerical kernels: device,
  torch and transformers versions, and on CPUs ATen's SIMD capability, the instruction sets
  oneDNN may use for bf16 (AVX512-BF16, AMX) and the environment variables that cap them. bf16
  matmuls round differently on each, so a score computed on one is never served to another.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import os
import sys
import types
from typing import Any

import torch

from editgate.cache import cache_key

# Environment variables that change which CPU kernels run (ATen's dispatch, oneDNN, MKL).
KERNEL_ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                   "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")
# Instruction sets that give bf16 matmuls their own kernels (torch.cpu._is_<name>_supported).
CPU_FEATURES = ("avx2", "avx512", "avx512_bf16", "vnni", "amx_tile", "amx_fp16")


def compute_environment(device: torch.device | str = "cpu") -> dict[str, str]:
    """What selects the kernels a forward on ``device`` runs: joins every compute cache key and
    every run report, so results from another machine's kernels are never mixed with these."""
    import transformers

    device = torch.device(device)
    env = {"device": device.type, "torch": torch.__version__,
           "transformers": transformers.__version__,
           # A different work split between threads moves float32 scores by ~1e-5.
           "threads": str(torch.get_num_threads())}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        env.update(gpu=torch.cuda.get_device_name(index), cuda=str(torch.version.cuda),
                   gpu_capability=f"{major}.{minor}",
                   tf32=str(torch.backends.cuda.matmul.allow_tf32))
    elif device.type == "cpu":
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["cpu_features"] = ",".join(_cpu_features())
    for name in KERNEL_ENV_VARS:
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def _cpu_features() -> list[str]:
    found = []
    for name in CPU_FEATURES:
        probe = getattr(torch.cpu, f"_is_{name}_supported", None)
        if probe is not None and probe():
            found.append(name)
    return found


def environment_key(device: torch.device | str = "cpu") -> str:
    """A short digest of :func:`compute_environment`."""
    return cache_key(**compute_environment(device))


# --------------------------------------------------------------------------- code


def code_fingerprint(*objects: Any) -> str:
    """Digest of the source code behind ``objects`` (classes, functions or modules).

    Starts from each object's module (for a class, the modules of its whole MRO) and follows
    every ``import`` in those sources — module level or inside functions — to modules of the same
    top-level package or of editgate. Standard-library and third-party modules are left out:
    their versions are part of :func:`compute_environment`. Files are re-read when they change on
    disk, so an edit made while the process runs shows at the next call.
    """
    closure: set[str] = set()
    for obj in objects:
        for start in _start_modules(obj):
            closure |= _closure(start, {start.partition(".")[0], "editgate"})
    sha = hashlib.sha256()
    for name in sorted(closure):
        sha.update(f"{name}\0{_parsed(name)[0]}\0".encode())
    return sha.hexdigest()[:24]


def _start_modules(obj: Any) -> list[str]:
    if isinstance(obj, types.ModuleType):
        return [obj.__name__]
    if inspect.isclass(obj):
        return [cls.__module__ for cls in obj.__mro__ if _source_path(cls.__module__) is not None]
    return [getattr(obj, "__module__", None) or type(obj).__module__]


def _closure(start: str, packages: set[str]) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        name = stack.pop()
        if name in seen or name.partition(".")[0] not in packages or _source_path(name) is None:
            continue
        seen.add(name)
        stack.extend(_parsed(name)[1])
    return seen


@functools.cache
def _source_path(module: str) -> str | None:
    """The ``.py`` file of ``module`` (None for built-in, compiled or missing modules)."""
    path = getattr(sys.modules.get(module), "__file__", None)
    if path is None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        path = spec.origin if spec is not None else None
    return path if path and path.endswith(".py") else None


def _parsed(module: str) -> tuple[str, tuple[str, ...]]:
    """(sha256 of the source, modules it imports) of ``module``, memoised per file version."""
    path = _source_path(module)
    assert path is not None
    stat = os.stat(path)
    return _parse_file(module, path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _parse_file(module: str, path: str, mtime_ns: int, size: int) -> tuple[str, tuple[str, ...]]:
    with open(path, "rb") as handle:
        source = handle.read()
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    # The packages containing the module run first (their __init__ files).
    found = [module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)]
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.append(base)
            # `from package import submodule` imports a module, not a name.
            found.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return hashlib.sha256(source).hexdigest(), tuple(found)


def compute_key(lm: Any, code: Any, **parts: Any) -> str:
    """Cache key of a value computed on model ``lm`` by ``code`` (a function, class or module):
    ``parts`` plus the model's fingerprint, the kernels it runs on and the code's fingerprint."""
    return cache_key(model=lm.fingerprint, environment=lm.environment,
                     code=code_fingerprint(code), **parts)
