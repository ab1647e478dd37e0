"""Regimes: how edit requests reach an editor (the paper's grid), named so ``-k`` selects them.

=========================  ================================================================
``single``                 one request, one editor call
``sequential-N``           N requests, one call each, applied one after another
``batch-N``                N requests in one call
``batch-B-sequential-N``   N requests in calls of B, applied one after another
=========================  ================================================================

Sequential regimes are evaluated at checkpoints (numbers of edits applied so far), so a run yields
a curve: ``sequential-20@10`` is the model after the first 10 of its 20 edits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from editgate.errors import ConfigError

DEFAULT_CHECKPOINTS = (1, 10, 25, 50, 100, 200, 500, 1000)

_PATTERNS = (
    (re.compile(r"single"), lambda m: (1, 1)),
    (re.compile(r"sequential-(\d+)"), lambda m: (1, int(m[1]))),
    (re.compile(r"batch-(\d+)"), lambda m: (int(m[1]), int(m[1]))),
    (re.compile(r"batch-(\d+)-sequential-(\d+)"), lambda m: (int(m[1]), int(m[2]))),
)


@dataclass(frozen=True)
class Regime:
    name: str
    batch_size: int  # requests per editor call
    total: int  # requests overall

    @classmethod
    def parse(cls, name: str) -> Regime:
        for pattern, sizes in _PATTERNS:
            match = pattern.fullmatch(name.strip())
            if match:
                batch, total = sizes(match)
                if batch < 1 or total < 1:
                    raise ConfigError(f"regime {name!r}: sizes must be ≥ 1")
                if total % batch:
                    raise ConfigError(f"regime {name!r}: {total} edits do not split into "
                                      f"batches of {batch}")
                return cls(name.strip(), batch, total)
        raise ConfigError(
            f"unknown regime {name!r}; expected single, sequential-N, batch-N or "
            "batch-B-sequential-N")

    @property
    def steps(self) -> int:
        return self.total // self.batch_size

    @property
    def is_sequential(self) -> bool:
        return self.steps > 1

    def checkpoints(self, wanted: tuple[int, ...] | None = None) -> list[int]:
        """Edit counts at which the model is evaluated: multiples of the batch size, ending at N."""
        candidates = wanted if wanted else DEFAULT_CHECKPOINTS
        points = {c for c in candidates if c <= self.total and c % self.batch_size == 0}
        points.add(self.total)
        return sorted(points)


@dataclass(frozen=True)
class EditCase:
    """One edited model of the matrix: an editor under a regime, after ``checkpoint`` edits."""

    editor: str
    regime: Regime
    checkpoint: int

    @property
    def id(self) -> str:
        suffix = f"@{self.checkpoint}" if self.checkpoint != self.regime.total else ""
        return f"{self.editor}-{self.regime.name}{suffix}"

    @property
    def group(self) -> str:
        """xdist group: all checkpoints of one (editor, regime) chain run on one worker."""
        return f"{self.editor}-{self.regime.name}"

    @property
    def steps(self) -> int:
        return self.checkpoint // self.regime.batch_size
