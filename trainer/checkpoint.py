"""Checkpoints for an exact resume.

One file ``<dir>/last.pt`` (written atomically) holding:
``model`` (online + momentum encoders, heads, prototypes, rank-0 buffers), ``optimizer``,
``step`` (the next step to run: LR and momentum schedules are functions of it), ``config``,
``world_size`` and ``per_rank``: for every rank its buffers (MoCo queue + pointer, SwAV queue,
BN running statistics: these differ across ranks), RNG states and the stream position
(``stream.state_dict()`` when the source has one, and the last batch's ``epoch``/``step``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "last.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, if initialised) RNG states of this process."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/last.pt`` via a temporary file and an atomic rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or ``<dir>/last.pt`` when given a directory); clear error if missing."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first or drop --resume")
    # weights_only=False: the checkpoint holds RNG states (tuples, numpy arrays) we wrote ourselves.
    return torch.load(path, map_location=map_location, weights_only=False)
