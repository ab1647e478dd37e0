"""How many edits a chain takes before an ability gate fails, found by search (--budget-search).

One test per (editor, sequential regime): the chain is scored at doubling edit counts until a
gate fails, then bisected (editgate.budget). Every state it scores is gated exactly as the grid
gates a checkpoint and recorded, so the report draws the curve; the test fails when the chain
breaks before its end, naming where.
"""

import pytest

from editgate.budget import search_budget
from editgate.gate import paired_gate
from editgate.regimes import EditCase


def test_edit_budget(budget_chain, editgate, recorder):
    editor, regime = budget_chain
    session = editgate.session
    abilities = editgate.abilities
    session.ensure_baselines(abilities, regime.total, golden=editgate.golden_abilities)

    def passes(edits: int) -> bool:
        with session.edited(EditCase(editor, regime, edits)) as state:
            if state.error is not None:
                recorder.edit_failed(state)
                return False
            passed, scores = True, {}
            for ability, metric in editgate.gated_metrics():
                if ability not in scores:
                    scores[ability] = session.evaluate(ability, state)
                result = paired_gate(ability, metric, session.baseline(ability), scores[ability],
                                     editgate.tolerances.tolerance(ability, metric))
                recorder.gate(state, result, session)
                passed &= result.passed
            return passed

    search = search_budget(passes, regime.total, step=regime.batch_size,
                           resolution=editgate.config.getoption("--budget-resolution"))
    recorder.budget(editor, regime.name, search)
    if search.first_failure is not None:
        pytest.fail(f"{editor} {regime.name}: every gate passes up to {search.budget} edits, one "
                    f"fails by {search.first_failure} (scored at {list(search.scored)})",
                    pytrace=False)
