"""Run an ability on a model: select items, build requests, run them in bulk, score per item.

:func:`prepare` resolves an ability for one session into an
:class:`~editgate.abilities.base.AbilityRun` (its items, few-shot examples, prompt style and data
fingerprint). :func:`evaluate` turns that into per-item results on the model as it is right now
(edited or not); :func:`cached_evaluate` memoises that on disk under a key made of everything the
scores depend on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomllib

from editgate.abilities.base import Ability, AbilityRun, ItemResult, PromptStyle
from editgate.cache import cache_key, cache_path, json_cache
from editgate.data import load_dataset
from editgate.errors import ConfigError
from editgate.profiles import Profile
from editgate.registry import ABILITIES
from editgate.runner import AbilityRunner

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
