"""Shared pytest setup: markers, CUDA gating, RNG restore."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from tests.trainer_cli_helpers import checkpoint, ucf101  # noqa: F401 (module-scoped fixtures shared by the trainer CLI tests)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available() or os.environ.get("CLIPSERVE_FAIL_WITHOUT_CUDA") == "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (set CLIPSERVE_FAIL_WITHOUT_CUDA=1 to fail instead)")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_rng_state():
    py_state = random.getstate()
    np_state = np.random.get_state()
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)
