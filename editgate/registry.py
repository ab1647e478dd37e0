"""Name → object registries for editors, abilities and models, filled from entry points.

Built-in editors, abilities and models are declared in pyproject.toml under the entry-point
groups ``editgate.editors``, ``editgate.abilities`` and ``editgate.models``, exactly like
third-party ones, so a plug-in
package joins the test matrix by declaring an entry point. For a quick local experiment, the
``register`` decorator adds a class without packaging (e.g. from a conftest.py).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Generic, TypeVar

from editgate.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, group: str, kind: str) -> None:
        self.group, self.kind = group, kind
        self._extra: dict[str, T] = {}

    def register(self, name: str):
        """``@EDITORS.register("my-editor")`` on a class: available by that name from now on."""

        def decorate(obj: T) -> T:
            self._extra[name] = obj
            return obj

        return decorate

    def _entry_points(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._extra))

    def get(self, name: str) -> T:
        if name in self._extra:
            return self._extra[name]
        found = self._entry_points().get(name)
        if found is None:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}")
        try:
            return found.load()  # type: ignore[union-attr]
        except Exception as exc:
            raise ConfigError(f"{self.kind} {name!r} failed to load from {found.value}: "  # type: ignore[union-attr]
                              f"{type(exc).__name__}: {exc}") from exc


EDITORS: Registry = Registry("editgate.editors", "editor")
ABILITIES: Registry = Registry("editgate.abilities", "ability")
# Entries: objects with ``check()`` and ``load(*, device, dtype) -> LoadedModel`` (editgate.models).
MODELS: Registry = Registry("editgate.models", "model")
