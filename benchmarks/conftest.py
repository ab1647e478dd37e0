"""Fixtures of the benchmarks: the packaged SmolLM2 (``--dtype`` picks its dtype) and the data."""

from __future__ import annotations

import pytest

from editgate.data import resolve_data_dir


@pytest.fixture(scope="session")
def data_dir():
    return resolve_data_dir(None)


@pytest.fixture(scope="session")
def lm(request):
    from editgate.models import load_model

    return load_model("smollm2-135m", dtype=request.config.getoption("--dtype"))
