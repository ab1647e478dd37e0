r"""FT-M — fine-tuning one MLP layer on the teacher-forced answer (EasyEdit's FT-M).

EasyEdit's FT with ``objective_optimization: target_new`` ("FT-M" in its survey, arXiv
2401.01286): the same constrained fine-tuning loop as FT-L (``ft_l.py``: Adam on one MLP output
projection, entries clamped to ±ε, the same chunking and stopping rule), but the loss is the
ordinary autoregressive one — each target token scored at its own position, given the prompt and
the target tokens before it::

    min_W  mean_r  −1/|y_r| Σ_t log P(y_r,t | x_r, y_r,<t; W)     s.t.  ‖W − W₀‖_∞ ≤ ε

This is the objective editgate's ``ft-l`` used before it was made to follow the reference; it
is the stronger of the two baselines (the answer is learnt as a sequence, not as a bag of next
tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from editgate.editors.base import Batch
from editgate.editors.ft_l import FTL, FTLHParams, Objective, Targets
from editgate.edits import EditRequest
from editgate.models import LoadedModel


def teacher_forced_targets(lm: LoadedModel, requests: Sequence[EditRequest],
                           ) -> tuple[Batch, Targets]:
    """Rows ``prompt + target[:-1]``; target token t is predicted at position len(prompt)−1+t."""
    rows, targets = [], []
    for row, request in enumerate(requests):
        prompt, target = lm.encode(request.prompt, bos=True), lm.encode(request.target_new)
        rows.append(prompt + target[:-1])
        targets.extend((row, len(prompt) - 1 + t, token) for t, token in enumerate(target))
    return Batch.of(lm, rows), targets


class FTM(FTL):
    name = "ft-m"
    version = "1"
    HParams = FTLHParams

    def objective(self) -> Objective:
        return teacher_forced_targets
