"""Benchmark: memory of the video index in the service's two processes, 240k videos (Kinetics scale).

The REST process holds the index; the data-plane process (spawned) needs it too. Two ways:

- ``pickled`` (before issue 13): the ``RecordSequence`` of in-memory rows is pickled into the
  data-plane process, which unpickles its own copy;
- ``mapped`` (now, ``clipserve.datasets.shared_rows``): the rows are written once to a file both
  processes ``mmap`` read-only, and the REST process drops its Python rows.

Workload: one real 10 s, 30 fps, 64×48 H.264 video is indexed (its cache row: compressed
timestamps of 300 frames and keyframe positions); its row is copied ``--videos`` times under
Kinetics-like names (each copy distinct objects, as rows read from the cache are). Each mode runs
in a fresh spawned "service" process that builds the rows, (maps them,) and spawns a data-plane
process that receives the index and reads every video's relative path (touching every row).
Figures per process: USS (private memory: ``Private_Clean + Private_Dirty`` of
``/proc/<pid>/smaps_rollup``) and PSS above a baseline process that imported the same modules
but holds no index; ``file_bytes`` is the mapped file.

    .venv/bin/python benchmarks/index_memory.py [--videos 240000]
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import platform
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from clipserve.datasets.index import RecordSequence, build_index  # noqa: E402
from clipserve.datasets.record import DatasetEntry  # noqa: E402
from clipserve.datasets.shared_rows import MappedRows  # noqa: E402
from clipserve.media.encode import encode_video, moving_square_frames  # noqa: E402

MIB = 1 << 20


def memory_mib() -> dict[str, float]:
    """USS and PSS of this process in MiB (``/proc/self/smaps_rollup``)."""
    fields: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"uss_mib": round(uss / MIB, 1), "pss_mib": round(fields.get("Pss", 0) / MIB, 1)}


def _data_plane(records: RecordSequence | None, queue: multiprocessing.Queue) -> None:
    if records is not None:
        for position in range(len(records)):  # every row touched, as a full epoch of plans would
            records.relative_path(position)
        records[len(records) - 1]
    gc.collect()
    queue.put(memory_mib())


def _spawn_data_plane(records: RecordSequence | None) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_data_plane, args=(records, queue))
    child.start()
    result = queue.get(timeout=600)
    child.join(timeout=60)
    return result


def synthetic_rows(template_path: Path, videos: int) -> list[tuple[DatasetEntry, tuple]]:
    """``videos`` distinct copies of the cache row of the one real video at ``template_path``."""
    root = template_path.parent.parent
    index = build_index(root, dataset="folder", split="train", workers=0, progress=False,
                        cache_path=root / "index.sqlite")
    (entry, row), = index.records.rows
    rows = []
    for i in range(videos):
        copied = tuple(bytes(bytearray(v)) if isinstance(v, bytes) else v for v in row)
        name = f"train/class {i % 400:03d} (k400)/{i:011d}_{i % 300:06d}_{i % 300 + 10:06d}.mp4"
        rows.append((DatasetEntry(relative_path=name, label_name=f"class {i % 400:03d} (k400)", label_id=i % 400),
                     copied))
    return rows


def _service(mode: str, template: str, videos: int, queue: multiprocessing.Queue) -> None:
    baseline = memory_mib()
    rows = synthetic_rows(Path(template), videos)
    records = RecordSequence(rows)
    del rows
    file_bytes = 0
    mapped = None
    if mode == "mapped":
        mapped = MappedRows.create(records.rows)
        file_bytes = mapped.size_bytes
        records = RecordSequence(mapped)
        for position in range(len(records)):  # the REST process touches every row too (e.g. a summary)
            records.relative_path(position)
    gc.collect()
    service = memory_mib()
    data_plane = _spawn_data_plane(records)
    if mapped is not None:
        mapped.unlink()
    queue.put({"rest_process": {k: round(service[k] - baseline[k], 1) for k in service},
               "data_plane_process": data_plane, "file_bytes": file_bytes})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=240_000)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "root" / "c" / "v.mp4"
        template.parent.mkdir(parents=True)
        encode_video(template, moving_square_frames(300, 64, 48), fps=30, keyframe_interval_frames=250)
        empty = _spawn_data_plane(None)
        results: dict[str, object] = {"benchmark": "index_memory", "videos": args.videos,
                                      "machine": platform.machine(), "empty_data_plane_process": empty}
        for mode in ("pickled", "mapped"):
            queue = context.Queue()
            service = context.Process(target=_service, args=(mode, str(template), args.videos, queue))
            service.start()
            result = queue.get(timeout=1200)
            service.join(timeout=60)
            data_plane = result["data_plane_process"]
            result["data_plane_process"] = {k: round(data_plane[k] - empty[k], 1) for k in data_plane}
            results[mode] = result
    print(json.dumps(results, indent=2))
    before, after = results["pickled"], results["mapped"]
    print(f"index of {args.videos} videos, MiB above an empty process (USS REST + data plane): "
          f"pickled {before['rest_process']['uss_mib']} + {before['data_plane_process']['uss_mib']}, "
          f"mapped {after['rest_process']['uss_mib']} + {after['data_plane_process']['uss_mib']} "
          f"(file {after['file_bytes'] / MIB:.0f} MiB, shared page cache)")


if __name__ == "__main__":
    main()
