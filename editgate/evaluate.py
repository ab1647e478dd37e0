"""Run an ability on a model: select items, build requests, run them in bulk, score per item.

:class:`AbilityRun` is an ability resolved for one session (its items, few-shot examples, prompt
style and data fingerprint). :func:`evaluate` turns it into per-item results on the model as it
is right now (edited or not); :func:`cached_evaluate` memoises that on disk under a key made of
everything the scores depend on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from editgate.abilities.base import Ability, Item, ItemResult, PromptStyle, Request
from editgate.cache import cache_key, cache_path, json_cache
from editgate.data import load_dataset
from editgate.errors import ConfigError
from editgate.fingerprint import code_fingerprint
from editgate.models import LoadedModel
from editgate.profiles import Profile
from editgate.registry import ABILITIES
from editgate.runner import AbilityRunner, Choices, Distributions, Generate

PROMPTS_FILE = Path(__file__).parent / "configs" / "prompts.toml"


def prompt_style(model_name: str, ability: str, path: Path = PROMPTS_FILE, *,
                 defaults: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> PromptStyle:
    """The prompt form for (model, ability), each source over the one before: the ability's
    own ``default_style`` (a plugin's), ``[default.ability]`` and ``[model.ability]`` of
    ``prompts.toml``, then ``--prompt ABILITY.KEY=VALUE`` overrides."""
    with open(path, "rb") as handle:
        config = tomllib.load(handle)
    entry: dict[str, Any] = dict(defaults or {})
    for section in ("default", model_name):
        entry.update(config.get(section, {}).get(ability, {}))
    entry.update(overrides or {})
    known = {"shots", "chat"}
    return PromptStyle(shots=int(entry.get("shots", 0)), chat=bool(entry.get("chat", False)),
                       options={k: v for k, v in entry.items() if k not in known})


@dataclass(frozen=True)
class AbilityRun:
    """An ability resolved for one session: what is scored, and how it is prompted."""

    ability: Ability
    items: tuple[Item, ...]
    shots: tuple[Item, ...]
    style: PromptStyle
    generation: bool
    data_fingerprint: str
    profile: str
    # Requests digests per model fingerprint (building every prompt again for each key is slow).
    _requests_digests: dict[str, str | None] = field(default_factory=dict, compare=False,
                                                     repr=False)

    @property
    def name(self) -> str:
        return self.ability.name

    def key(self) -> dict[str, Any]:
        """Everything the scores depend on apart from the model, its weights and the kernels:
        the items and prompt style, and the ability's code (its module and what it imports)."""
        return {
            "ability": self.name, "code": code_fingerprint(type(self.ability)),
            "data": self.data_fingerprint, "items": [i.id for i in self.items],
            "shots": [s.id for s in self.shots], "style": self.style.key(),
            "generation": self.generation,
        }

    def requests_digest(self, lm: LoadedModel) -> str | None:
        """sha256 of the exact requests (prompt texts, continuations, stop strings, caps) every item
        sends to the runner on ``lm``; None for an ability that builds no per-item requests."""
        if lm.fingerprint not in self._requests_digests:
            sha = hashlib.sha256()
            try:
                for item in self.items:
                    requests = self.ability.requests(item, self.shots, self.style, lm,
                                                     self.generation)
                    sha.update(json.dumps({name: _request_fields(request) for name, request
                                           in sorted(requests.items())}).encode())
                digest: str | None = sha.hexdigest()
            except NotImplementedError:  # an ability that overrides evaluate() instead
                digest = None
            self._requests_digests[lm.fingerprint] = digest
        return self._requests_digests[lm.fingerprint]


def _request_fields(request: Any) -> dict[str, Any]:
    """A request's fields as JSON-able values; a callable (a Distributions reducer) by name."""
    fields = {"kind": type(request).__name__}
    for item in dataclasses.fields(request):
        value = getattr(request, item.name)
        fields[item.name] = (value.__qualname__ if callable(value) else value)
    return fields


def prepare(ability_name: str, data_dir: Path, model_name: str, profile: Profile,
            limit: int | None = None, prompt: Mapping[str, Any] | None = None) -> AbilityRun:
    """``ability_name`` resolved for a session; ``prompt``: ``--prompt`` overrides of its style."""
    ability: Ability = ABILITIES.get(ability_name)()
    dataset = load_dataset(ability.dataset, data_dir)
    pool, candidates = ability.split(dataset.records)
    style = prompt_style(model_name, ability_name, defaults=ability.default_style,
                         overrides=prompt)
    if style.shots > len(pool):
        raise ConfigError(f"{ability_name}: {style.shots} shots asked, the pool holds {len(pool)}")
    count = limit if limit is not None else profile.items
    return AbilityRun(
        ability=ability, items=tuple(ability.select(candidates, count)),
        shots=tuple(ability.choose_shots(pool, style.shots)), style=style,
        generation=profile.generation, data_fingerprint=dataset.fingerprint, profile=profile.name,
    )


def evaluate(run: AbilityRun, runner: AbilityRunner, progress: Callable[[int], None] | None = None,
             state: str = "base") -> list[ItemResult]:
    """Per-item results of ``run`` on the runner's model in its current weight state ``state``
    ('base' for the unedited weights, else the delta chain's key)."""
    with runner.precision():
        return run.ability.evaluate(run, runner, state, progress)


def run_requests(run: AbilityRun, runner: AbilityRunner,
                 progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """The default evaluation: every item's requests, run in bulk by kind, then scored per item."""
    per_item: list[dict[str, Request]] = [
        run.ability.requests(item, run.shots, run.style, runner.lm, run.generation)
        for item in run.items
    ]
    outputs: list[dict[str, Any]] = [{} for _ in per_item]
    total = sum(len(reqs) for reqs in per_item)
    step = (lambda n: progress(n * len(run.items) / max(total, 1))) if progress else None
    for kind, method in ((Choices, runner.loglikelihood), (Distributions, runner.distributions),
                         (Generate, runner.generate)):
        keys = [(i, k) for i, reqs in enumerate(per_item) for k, r in reqs.items()
                if isinstance(r, kind)]
        if keys:
            for (i, k), out in zip(keys, method([per_item[i][k] for i, k in keys], progress=step)):
                outputs[i][k] = out
    return [run.ability.score(item, out, run.style) for item, out in zip(run.items, outputs)]


def results_key(run: AbilityRun, runner: AbilityRunner, state: str) -> str:
    """Cache key of ``run``'s results on the runner's model, precision, kernels and code in weight
    state ``state`` ('base' or a delta chain), with the exact texts of its requests."""
    return cache_key(run=run.key(), requests=run.requests_digest(runner.lm),
                     model=runner.fingerprint, state=state)


def cached_evaluate(run: AbilityRun, runner: AbilityRunner, state: str,
                    progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """:func:`evaluate`, memoised on disk by (run key, model fingerprint, weight state)."""
    path = cache_path("results", results_key(run, runner, state), ".json")
    raw = json_cache(path, lambda: [r.to_json() for r in evaluate(run, runner, progress, state)])
    return [ItemResult.from_json(r) for r in raw]
