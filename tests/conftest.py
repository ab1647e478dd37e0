"""Shared fixtures for editgate's own tests: tiny random models, the real model, the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editgate.data import resolve_data_dir
from editgate.testing import TINY_ARCHS, tiny_model


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return resolve_data_dir(None)


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny(request):
    """Each tiny architecture in turn (GPT-2 Conv1D, Llama, Gemma 3 with sliding window)."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def smollm2():
    from editgate.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU two threads are much slower.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
