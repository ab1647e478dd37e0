"""The edits took: efficacy, paraphrase and neighborhood rates above their thresholds.

Without these, an editor that changes nothing would pass every ability gate.
"""

import pytest

from editgate.edit_success import success_rate


def test_edit_success(edited, success_metric, editgate, recorder):
    recorder.require_edit(edited)
    outcomes = editgate.session.edit_success(edited)[success_metric]
    threshold = editgate.tolerances.success_threshold(success_metric,
                                                      editgate.settings.edit_source)
    rate = success_rate(outcomes)
    failed = [o.item_id for o in outcomes if o.metrics["success"] < 1]
    recorder.success(edited, success_metric, rate, threshold, failed, len(outcomes))
    if rate < threshold:
        pytest.fail(f"{edited.case.id}: {success_metric} {rate:.3f} < threshold {threshold:g} "
                    f"over {len(outcomes)} probes; failed: {failed[:10]}", pytrace=False)
