"""The unedited model reproduces the committed golden baselines.

This is the regression test of the runner, the loader and the data: any change that moves an
unedited score shows up here. Goldens are scored in float32 whatever --eval-dtype the gates use:
float32 reproduces across CPU kernels, bf16 does not (README, "Reproducibility").
`--update-baselines` rewrites the golden file for review.
"""

import pytest


def test_baseline(baseline_ability, editgate, golden, recorder):
    if editgate.settings.limit is not None:
        pytest.skip("golden baselines are defined for the profile's item counts; --limit is set")
    entry, problems = golden.verify(baseline_ability)
    recorder.baseline(baseline_ability, entry, problems)
    assert not problems, "\n".join(problems)
