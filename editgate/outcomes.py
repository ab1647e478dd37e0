"""What a run decided, collected from test reports (so it works across pytest-xdist workers).

Each gate test attaches one JSON-able record to its report's ``user_properties``; the report plugin
in the controller process (or the only process, without xdist) gathers them, and
:func:`editgate.report.collect.build_report` turns them (through :class:`RunOutcomes`) into the
one :class:`~editgate.report.schema.RunReport` that the terminal summary, the JSON/HTML reports
and the run history all read. Per-item results stay in
the on-disk results cache; records carry the cache keys to find them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

PROPERTY = "editgate"


@dataclass
class CaseOutcome:
    """One edited state: an editor under a regime after ``checkpoint`` edits."""

    id: str
    editor: str
    regime: str
    checkpoint: int
    edit_seconds: float = 0.0
    error: str | None = None
    state_key: str = ""


@dataclass
class RunOutcomes:
    cases: dict[str, CaseOutcome] = field(default_factory=dict)
    gates: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    success: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    searches: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # --budget-search

    def add(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if kind == "baseline":
            self.baselines[record["ability"]] = record
            return
        if kind == "budget":
            self.searches[(record["editor"], record["regime"])] = record
            return
        case = record["case"]
        self.cases.setdefault(case["id"], CaseOutcome(**case))
        if kind == "gate":
            self.gates[(case["id"], record["ability"], record["metric"])] = record["result"]
        elif kind == "success":
            self.success[(case["id"], record["metric"])] = record
        elif kind != "edit":
            raise ValueError(f"unknown outcome record kind {kind!r}")

    def __bool__(self) -> bool:
        return bool(self.cases or self.baselines)

    def case_passed(self, case_id: str) -> bool:
        gates = [g for (c, _, _), g in self.gates.items() if c == case_id]
        return self.cases[case_id].error is None and all(g["passed"] for g in gates)

    def edit_budgets(self) -> dict[tuple[str, str], int]:
        """Per (editor, sequential regime): the largest checkpoint up to which every ability gate
        passed at every checkpoint — "how many edits before the model breaks?" (0: not even one).
        """
        chains: dict[tuple[str, str], list[CaseOutcome]] = defaultdict(list)
        for case in self.cases.values():
            chains[(case.editor, case.regime)].append(case)
        budgets = {}
        for key, cases in chains.items():
            cases.sort(key=lambda c: c.checkpoint)
            if len(cases) < 2 and cases[0].regime == "single":
                continue
            budget = 0
            for case in cases:
                if not self.case_passed(case.id):
                    break
                budget = case.checkpoint
            budgets[key] = budget
        return budgets
