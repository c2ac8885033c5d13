"""Dataset adapters by name: ``get_adapter('k400' | 'folder')`` → ``(root, split) -> DatasetListing``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clipserve.datasets.folder import folder_adapter
from clipserve.datasets.k400 import k400_adapter
from clipserve.datasets.record import DatasetListing
from clipserve.errors import DatasetError

Adapter = Callable[[Path, str], DatasetListing]
"""``adapter(root, split)`` lists the videos of one split with their labels; raises ``DatasetError``."""

ADAPTERS: dict[str, Adapter] = {
    "k400": k400_adapter,
    "folder": folder_adapter,
}


def adapter_names() -> list[str]:
    """Names accepted by :func:`get_adapter` (and by ``--dataset``)."""
    return sorted(ADAPTERS)


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name``; :class:`DatasetError` naming the known ones otherwise."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(adapter_names())}") from None
