"""The unedited model reproduces the committed golden baselines.

This is the regression test of the runner, the loader and the data: any change that moves an
unedited score shows up here. `--update-baselines` rewrites the golden file for review.
"""

import pytest

from editgate.baselines import check_or_update, summarize


def test_baseline(baseline_ability, editgate, recorder):
    if editgate.settings.limit is not None:
        pytest.skip("golden baselines are defined for the profile's item counts; --limit is set")
    problems = check_or_update(editgate, baseline_ability)
    recorder.baseline(baseline_ability, summarize(editgate, baseline_ability), problems)
    assert not problems, "\n".join(problems)
