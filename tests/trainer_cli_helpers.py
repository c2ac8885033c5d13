"""Running the trainer's commands (``python -m trainer``, ``trainer.eval``, ``trainer.linear``,
``trainer.finetune``) as subprocesses in tests, and the small fixtures they share: a tiny
UCF101-layout set and a 2-step ρMoCo checkpoint of the tiny backbone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipserve.sample_layouts import build_layout_sample, make_layout_spec
from tests.service_helpers import REPO_ROOT

TINY = ["--profile", "cpu", "--backbone", "tiny", "--progress", "false", "--mlp-hidden-dim", "32", "--output-dim",
        "16", "--moco-queue-size", "16", "--device", "cpu"]
"""Trainer flags for the smallest model the objectives accept (CPU, tiny backbone, small heads)."""


def subprocess_env() -> dict[str, str]:
    """This environment without ``CLIPSERVE_*`` settings, with the checkout importable, one OpenMP thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSERVE_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in the checkout (captured text output, 300 s limit)."""
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=subprocess_env(), timeout=300)


@pytest.fixture(scope="module")
def ucf101(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UCF101-layout set (3 classes × 4 videos, quarter-size frames, ≤ 2 s) with its split lists."""
    root = tmp_path_factory.mktemp("ucf101")
    build_layout_sample(root, make_layout_spec("ucf101", 3, 4, seed=4, frame_scale=0.25, max_duration_seconds=2.0),
                        workers=1)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a 2-step ρMoCo run of the tiny backbone on the synthetic stream."""
    out = tmp_path_factory.mktemp("ckpt")
    done = run_module("trainer", "--objective", "moco", "--server", "synthetic", "--max-steps", "2",
                      "--checkpoint-dir", str(out), *TINY)
    assert done.returncode == 0, done.stderr
    return out
