"""Datasets: adapters that list (video, label) pairs, and the probed, cached video index.

``list_split(name, root, split, split_id=1) -> DatasetListing`` lists a split (``split_id``: the
official split 1..3 of ucf101/hmdb51; ``get_adapter(name)`` is the adapter itself); ``build_index(root, ...)``
(in :mod:`clipserve.datasets.index`, imported lazily because it pulls in PyAV) probes and caches it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipserve.datasets.record import DatasetEntry, DatasetListing, VideoRecord
from clipserve.datasets.registry import adapter_names, get_adapter, list_split

if TYPE_CHECKING:
    from clipserve.datasets.index import IndexSummary, VideoIndex, build_index

__all__ = [
    "DatasetEntry",
    "DatasetListing",
    "IndexSummary",
    "VideoIndex",
    "VideoRecord",
    "adapter_names",
    "build_index",
    "get_adapter",
    "list_split",
]


def __getattr__(name: str) -> Any:
    if name in ("IndexSummary", "VideoIndex", "build_index"):
        from clipserve.datasets import index

        return getattr(index, name)
    raise AttributeError(f"module 'clipserve.datasets' has no attribute {name!r}")
