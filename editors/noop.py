"""noop — the control that edits nothing.

Returns an empty delta. It must pass every ability gate (identical weights give identical
per-item scores, Δ ≡ 0: the suite's false-alarm rate is exactly zero) and fail every edit-success
gate (the new targets never win): the suite's own check that the success gates bite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from editgate.delta import WeightDelta
from editgate.editors.base import EditContext, Editor
from editgate.edits import EditRequest


@dataclass(frozen=True)
class NoopHParams:
    pass


class Noop(Editor):
    name = "noop"
    HParams = NoopHParams
    can_batch = True
    control = True

    def edit(self, ctx: EditContext, requests: Sequence[EditRequest], hp: NoopHParams,
             ) -> WeightDelta:
        return WeightDelta({}, {"editor": self.name})
