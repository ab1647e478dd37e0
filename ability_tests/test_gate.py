"""General abilities of the edited model stay within tolerance of the unedited baseline.

One test per (editor, regime, checkpoint) × (ability, metric): the paired per-item delta with its
95% bootstrap CI against the tolerance in ability_tests/tolerances.toml.
"""

import pytest

from editgate.gate import paired_gate


def test_ability(edited, ability_metric, editgate, recorder):
    recorder.require_edit(edited)
    ability, metric = ability_metric
    baseline = editgate.session.baseline(ability)
    after = editgate.session.evaluate(ability, edited)
    result = paired_gate(ability, metric, baseline, after,
                         editgate.tolerances.tolerance(ability, metric))
    recorder.gate(edited, result, editgate.session)
    if not result.passed:  # the gate's own message says it all: no assertion traceback
        pytest.fail(result.explain(), pytrace=False)
