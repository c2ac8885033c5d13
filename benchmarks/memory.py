"""Benchmark: memory of the service, its decode workers and the consumer over many batches.

``python -m clipserve start`` runs as a subprocess with a consumer process reading ``ClipStream``
batches through shared memory (the consumer of ``benchmarks/service.py``), with tiny settings
(crop 32 pixels, B=2, ρ=2, T=4) so that 10,000 batches take a few minutes. Every
``--sample-every`` batches this process reads, from ``/proc``, the resident set size (RSS) and the
proportional set size (PSS: shared pages split between the processes sharing them) of

  - the service's REST process,
  - its data-plane process (consumers, producers, rings),
  - its decode workers (and their fork server, the resource tracker): every other descendant, summed,
  - the consumer process.

It reports, per group, the RSS at the first and last sample and the growth per 1,000 batches: the
least-squares slope over the samples after the first 10 % of the run (start-up allocations, caches
filling and the first epochs are left out). Prints one JSON object and a one-line summary.

    .venv/bin/python benchmarks/memory.py [--batches 10000] [--sample-every 500] [--root DIR]

Without ``--root`` the synthetic dataset of ``benchmarks/service.py`` is used (built once under
``/tmp/clipserve-bench/k400``: 24 videos, 4 classes, ≤ 4 s, 170×128 px).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.service import _ensure_dataset, _Service, _settings, add_service_arguments  # noqa: E402

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc)."""
    tree = _children_by_parent()
    out, todo = [], list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(tree.get(child, []))
    return out


def memory_bytes(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) if it is gone."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0, 0
    pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return rss, pss


def is_data_plane(pid: int) -> bool:
    """Whether ``pid`` is a service's data-plane process (its spawned multiprocessing child)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _sample(service_pid: int, consumer_pid: int) -> dict[str, Any]:
    children = descendants(service_pid)
    planes = [pid for pid in children if is_data_plane(pid)]
    workers = [pid for pid in children if pid not in planes]
    service_rss, service_pss = memory_bytes(service_pid)
    plane_memory = [memory_bytes(pid) for pid in planes]
    worker_memory = [memory_bytes(pid) for pid in workers]
    consumer_rss, consumer_pss = memory_bytes(consumer_pid)
    return {
        "service_rss_bytes": service_rss, "service_pss_bytes": service_pss,
        "data_plane_rss_bytes": sum(m[0] for m in plane_memory),
        "data_plane_pss_bytes": sum(m[1] for m in plane_memory),
        "workers_rss_bytes": sum(m[0] for m in worker_memory), "workers_pss_bytes": sum(m[1] for m in worker_memory),
        "worker_processes": len(workers),
        "consumer_rss_bytes": consumer_rss, "consumer_pss_bytes": consumer_pss,
    }


def slope_per_1000(xs: list[int], ys: list[int]) -> float:
    """Least-squares slope of ys over xs, times 1000 (bytes per 1,000 batches)."""
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return 1000.0 * cov / var if var else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="K400-layout dataset (default: a small synthetic one)")
    parser.add_argument("--batches", type=int, default=10_000, help="batches to stream in total")
    parser.add_argument("--sample-every", type=int, default=500, help="batches between memory samples")
    add_service_arguments(parser, frames_per_clip=4, frame_stride=4, crop_size=32, batch_size=2)
    args = parser.parse_args()
    args.transport = "shm"
    if args.workers is None:
        args.workers = max(1, len(os.sched_getaffinity(0)))
    sample_every = max(1, min(args.sample_every, args.batches))

    root = _ensure_dataset(args.root)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clipserve-memory-") as tmp:
        served = _Service(root, args, Path(tmp) / "service.log")
        try:
            served.window(0, 1)  # attached, workers started
            done = 1
            samples.append({"batches": done, **_sample(served.process.pid, served.consumer.pid)})
            while done < args.batches:
                step = min(sample_every, args.batches - done)
                served.window(0, step)
                done += step
                samples.append({"batches": done, **_sample(served.process.pid, served.consumer.pid),
                                "elapsed_seconds": round(time.monotonic() - started, 1)})
        finally:
            served.close()
    elapsed = time.monotonic() - started
    steady = [s for s in samples if s["batches"] >= 0.1 * args.batches] or samples
    xs = [s["batches"] for s in steady]
    groups = {}
    for group in ("service", "data_plane", "workers", "consumer"):
        groups[group] = {
            "first_rss_bytes": samples[0][f"{group}_rss_bytes"],
            "last_rss_bytes": samples[-1][f"{group}_rss_bytes"],
            "rss_growth_bytes_per_1000_batches": slope_per_1000(xs, [s[f"{group}_rss_bytes"] for s in steady]),
            "pss_growth_bytes_per_1000_batches": slope_per_1000(xs, [s[f"{group}_pss_bytes"] for s in steady]),
        }
    result = {
        "benchmark": "memory",
        "root": str(root),
        "settings": _settings(args),
        "batches": args.batches,
        "sample_every": sample_every,
        "elapsed_seconds": elapsed,
        "batches_per_second": args.batches / elapsed,
        "steady_state_from_batch": xs[0],
        "groups": groups,
        "samples": samples,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "load_average_1m": os.getloadavg()[0]},
    }
    print(json.dumps(result, indent=1))
    mib = 2**20
    print("memory over {} batches: ".format(args.batches) + "; ".join(
        f"{name} RSS {g['first_rss_bytes'] / mib:.1f} → {g['last_rss_bytes'] / mib:.1f} MiB, "
        f"{g['rss_growth_bytes_per_1000_batches'] / 1024:+.1f} KiB per 1,000 batches" for name, g in groups.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
