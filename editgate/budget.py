"""The edit budget by search: how many edits a chain takes before a gate fails.

A fixed checkpoint grid (1, 10, 20, ...) answers "did it break by 20?" at a price of one scored
state per checkpoint. :func:`search_budget` answers "after how many edits does it break?" with
about 2·log₂(N/B) scored states: it scores the chain at doubling edit counts B, 2B, 4B, ... (B the
regime's batch size: a chain can only stop between calls) until a state fails or N is reached,
then bisects between the last passing and the first failing count until they are ``resolution``
edits apart. Every state it scores is a prefix of one chain, so the edits themselves are made once
and cached; only the scoring is paid per state.

The search assumes damage does not heal: once a state fails, every longer chain fails too. A
chain that fails, passes again and fails later is reported at the counts the search scored,
which :attr:`BudgetSearch.scored` lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetSearch:
    budget: int  # the largest scored edit count that passed (0: the first batch already failed)
    first_failure: int | None  # the smallest scored count that failed (None: none up to total)
    total: int  # the chain's length: budget == total means "at least total"
    step: int  # edits per call: the finest count a chain can stop at
    scored: tuple[int, ...]  # edit counts scored, in the order the search scored them

    @property
    def resolution(self) -> int:
        """How far apart the last pass and the first failure are (0: no failure found)."""
        return 0 if self.first_failure is None else self.first_failure - self.budget

    @property
    def text(self) -> str:
        if self.first_failure is None:
            return f"≥{self.budget}"
        if self.resolution <= self.step:  # as exact as the chain allows
            return str(self.budget)
        return f"{self.budget} (fails by {self.first_failure})"


def search_budget(passes: Callable[[int], bool], total: int, *, step: int = 1,
                  resolution: int | None = None) -> BudgetSearch:
    """The edit budget of a chain of ``total`` edits made ``step`` at a time.

    ``passes(n)`` scores the chain after ``n`` edits (a multiple of ``step``) and says whether
    every gate passed. The search stops bisecting once the last pass and the first failure are
    at most ``resolution`` edits apart (default: ``step``, the finest the chain allows).
    """
    if total < 1 or step < 1 or total % step:
        raise ValueError(f"a chain of {total} edits cannot stop every {step} edits")
    resolution = max(step, resolution or step)
    scored: list[int] = []
    verdicts: dict[int, bool] = {}

    def score(n: int) -> bool:
        if n not in verdicts:
            verdicts[n] = passes(n)
            scored.append(n)
        return verdicts[n]

    last_pass, first_fail, n = 0, None, step
    while first_fail is None:
        if score(n):
            last_pass = n
            if n == total:
                break
            n = min(2 * n, total)
        else:
            first_fail = n
    while first_fail is not None and first_fail - last_pass > resolution:
        middle = last_pass + (first_fail - last_pass) // (2 * step) * step
        if score(middle):
            last_pass = middle
        else:
            first_fail = middle
    return BudgetSearch(last_pass, first_fail, total, step, tuple(scored))
