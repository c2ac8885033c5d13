"""Dataset adapters by name: ``get_adapter('k400' | 'folder' | ...)`` → ``(root, split) -> DatasetListing``.

``ucf101`` and ``hmdb51`` have three official train/test splits; their adapters take a third
argument, ``split_id`` (1..3). :func:`list_split` calls any adapter with the split id it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clipserve.datasets.folder import folder_adapter
from clipserve.datasets.hmdb51 import hmdb51_adapter
from clipserve.datasets.k400 import k400_adapter
from clipserve.datasets.record import DatasetListing
from clipserve.datasets.ssv2 import ssv2_adapter
from clipserve.datasets.ucf101 import ucf101_adapter
from clipserve.errors import DatasetError

Adapter = Callable[..., DatasetListing]
"""``adapter(root, split)`` (or ``adapter(root, split, split_id)`` for ``NUMBERED_SPLIT_DATASETS``)
lists the videos of one split with their labels; raises ``DatasetError``."""

ADAPTERS: dict[str, Adapter] = {
    "k400": k400_adapter,
    "k600": k400_adapter,  # Kinetics-600/700 ship the same CSV columns and folder layouts
    "k700": k400_adapter,
    "folder": folder_adapter,
    "ucf101": ucf101_adapter,
    "hmdb51": hmdb51_adapter,
    "ssv2": ssv2_adapter,
}

NUMBERED_SPLIT_DATASETS = frozenset({"ucf101", "hmdb51"})
"""Datasets whose adapter takes ``split_id`` (their official train/test splits 1, 2, 3)."""


def adapter_names() -> list[str]:
    """Names accepted by :func:`get_adapter` (and by ``--dataset``)."""
    return sorted(ADAPTERS)


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name``; :class:`DatasetError` naming the known ones otherwise."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(adapter_names())}") from None


def list_split(name: str, root: Path, split: str, split_id: int = 1) -> DatasetListing:
    """The listing of ``split`` (and, for ucf101/hmdb51, official split ``split_id``) of ``root``.

    Raises:
        DatasetError: unknown dataset, a ``split_id`` other than 1 for a dataset without numbered
            splits, or whatever the adapter raises.
    """
    adapter = get_adapter(name)
    if name in NUMBERED_SPLIT_DATASETS:
        return adapter(root, split, split_id)
    if split_id != 1:
        raise DatasetError(f"split_id ({split_id}) must be 1 for dataset {name!r}: only "
                           f"{' and '.join(sorted(NUMBERED_SPLIT_DATASETS))} have numbered splits")
    return adapter(root, split)


def split_label(name: str, split: str, split_id: int = 1) -> str:
    """How the split is named in cache files and summaries: ``train`` or, for numbered splits, ``train1``."""
    return f"{split}{split_id}" if name in NUMBERED_SPLIT_DATASETS else split
