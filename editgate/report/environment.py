"""What a run ran on: model, settings, git commit, library versions, editor and ability versions.

Everything here is read without loading a model: library versions through ``importlib.metadata``,
the commit through ``git``, editor/ability classes through the registries (importing a class is
cheap), file hashes with sha256. The model fingerprint comes from the gate records.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from editgate.fingerprint import code_fingerprint, compute_environment
from editgate.models import resolve_device
from editgate.report.schema import AbilityInfo, EditorInfo, Environment, MetricInfo

LIBRARIES = ("editgate", "torch", "transformers", "tokenizers", "numpy", "datasets", "safetensors",
             "accelerate", "gguf", "pytest", "pytest-xdist", "pytest-benchmark", "rich")


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path) -> tuple[str | None, bool | None, str | None]:
    """(commit, dirty, branch) of the checkout at ``root``; Nones outside a git work tree."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None, None, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    return commit, (bool(status) if status is not None else None), branch


def editor_info(name: str) -> EditorInfo:
    from editgate.registry import EDITORS

    try:
        cls = EDITORS.get(name)
    except Exception:  # an unknown or broken editor still gets a report row
        return EditorInfo(name, version="?")
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:
        source = None
    return EditorInfo(name, version=str(getattr(cls, "version", "1")),
                      source_sha256=sha256_file(Path(source)) if source else None,
                      can_batch=bool(getattr(cls, "can_batch", False)),
                      code=code_fingerprint(cls))


def ability_info(name: str, note: str | None = None) -> AbilityInfo:
    from editgate.registry import ABILITIES

    try:
        cls = ABILITIES.get(name)
    except Exception:
        return AbilityInfo(name, version="?")
    metrics = [MetricInfo(m.name, kind=str(m.kind), chance=m.chance, unit=m.unit)
               for m in getattr(cls, "metrics", ())]
    return AbilityInfo(name, version=str(getattr(cls, "version", "1")), metrics=metrics,
                       code=code_fingerprint(cls), note=note)


def hparams_hashes() -> dict[str, str]:
    from editgate.editors.base import HPARAMS_DIR

    return {p.name: digest for p in sorted(Path(HPARAMS_DIR).glob("*.toml"))
            if (digest := sha256_file(p))}


def capture(settings: Any, *, rootdir: Path, editors: Iterable[str], abilities: Iterable[str],
            model_fingerprint: str | None = None, tolerances_file: str | None = None,
            command: Iterable[str] = (), xdist_workers: int = 0, device: str | None = None,
            attention_fallback: str | None = None,
            notes: dict[str, str] | None = None) -> Environment:
    """The environment of a run configured by ``settings`` (:class:`editgate.session.Settings`)."""
    commit, dirty, branch = git_state(rootdir)
    profile = getattr(settings.profile, "name", settings.profile)
    tolerances = Path(tolerances_file) if tolerances_file else None
    return Environment(
        model=str(settings.model), profile=str(profile), model_fingerprint=model_fingerprint,
        limit=settings.limit, device=device or str(settings.device), dtype=str(settings.dtype),
        eval_dtype=str(getattr(settings, "eval_dtype", settings.dtype)),
        generation_dtype=str(getattr(settings, "generation_dtype", settings.dtype)),
        seed=int(settings.seed), edit_source=str(settings.edit_source),
        data_dir=str(settings.data_dir), git_commit=commit, git_dirty=dirty, git_branch=branch,
        python=sys.version.split()[0], platform=platform.platform(), hostname=socket.gethostname(),
        cpu_count=os.cpu_count(), libraries=library_versions(),
        editors={name: editor_info(name) for name in editors},
        abilities={name: ability_info(name, (notes or {}).get(name)) for name in abilities},
        tolerances_file=str(tolerances) if tolerances else None,
        tolerances_sha256=sha256_file(tolerances) if tolerances else None,
        hparams_sha256=hparams_hashes(),
        hparam_overrides={k: dict(v) for k, v in (settings.hparam_overrides or {}).items()},
        command=list(command), xdist_workers=xdist_workers,
        compute=compute_environment(resolve_device(device or str(settings.device))),
        attention_fallback=attention_fallback,
    )
