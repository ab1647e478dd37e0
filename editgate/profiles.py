"""Profiles: how much of everything a run scores — items, metrics, abilities, regimes, checkpoints.

=============  =======  ==========  ============================================================
profile        items    generation  what it is for
=============  =======  ==========  ============================================================
``quick``      50       no          every commit: canaries, margins and cheap classification
``standard``   300      yes         before claiming an accuracy-level result
``paper``      all      yes         the full sets of arXiv 2401.04700
``glue-eval``  100      yes         the glue_eval protocol of lifelong-editing papers (AlphaEdit):
                                    SST-2, MRPC, CoLA, RTE, MMLU subsets, F1 and MCC
=============  =======  ==========  ============================================================

``single`` is the first link of every sequential chain, so it costs nothing extra (same cached
delta and scores). A profile that names no abilities scores every registered ability that does
not belong to a profile of its own (an ability's ``profiles``).
"""

from __future__ import annotations

from dataclasses import dataclass

from editgate.errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    items: int | None  # items per ability (None: the whole set)
    generation: bool  # run generation-based metrics
    regimes: tuple[str, ...]  # the default matrix (--regimes overrides)
    checkpoints: tuple[int, ...]  # edit counts sequential regimes are scored at (--checkpoints)
    abilities: tuple[str, ...] | None = None  # None: every general ability

    def includes(self, ability: type) -> bool:
        """Whether ``ability`` (a class) is scored by default in this profile."""
        if self.abilities is not None:
            return ability.name in self.abilities
        own = getattr(ability, "profiles", None)
        return own is None or self.name in own


GLUE_EVAL_TASKS = ("glue_sst2", "glue_mrpc", "glue_cola", "glue_rte", "glue_mmlu")

PROFILES = {
    "quick": Profile("quick", 50, generation=False,
                     regimes=("single", "sequential-10", "batch-10"), checkpoints=(1, 5, 10)),
    "standard": Profile("standard", 300, generation=True,
                        regimes=("single", "sequential-50", "batch-50", "batch-10-sequential-50"),
                        checkpoints=(1, 10, 25, 50)),
    "paper": Profile("paper", None, generation=True,
                     regimes=("single", "sequential-200", "batch-100", "batch-1000",
                              "batch-10-sequential-200"),
                     checkpoints=(1, 10, 20, 50, 100, 200)),
    # The papers score these after every block of edits; here a single edit and a chain of
    # batches of 10, scored at 10, 50 and 100 edits, give the F1-vs-edits curve on a CPU.
    "glue-eval": Profile("glue-eval", 100, generation=True,
                         regimes=("single", "batch-10-sequential-100"),
                         checkpoints=(10, 50, 100), abilities=GLUE_EVAL_TASKS),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
