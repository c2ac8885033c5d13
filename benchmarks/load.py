"""Benchmark: a consumer's throughput while the REST control plane takes bursts of 200 concurrent requests.

``python -m clipserve start`` runs as a subprocess with a consumer process reading ``ClipStream``
batches (shared memory, the consumer of ``benchmarks/service.py``). The run alternates windows:

  - ``undisturbed``: the consumer times ``--batches`` batches, no REST traffic;
  - ``loaded``: the same, while this process keeps the control plane busy with bursts of
    ``--concurrency`` (200) simultaneous requests: plans (``/v1/videos/{i}/plan``, random video and
    epoch), contact sheets (``/v1/videos/{i}/clips.png``, decoded in the service process) and
    ``/v1/stats``, a new burst as soon as the previous one is answered.

The ratio loaded / undisturbed of each pair of windows is reported, and their median (target ≥ 0.90),
with every non-2xx answer and transport error counted and request latencies. Prints one JSON object
and a one-line summary. Note that on a machine with few cores the load generator (this process)
and the contact sheets compete with the decode workers for the same CPUs.

    .venv/bin/python benchmarks/load.py [--root DIR] [--repeats 4] [--batches 20] [--workers N]

Without ``--root`` the synthetic dataset of ``benchmarks/service.py`` is used (built once under
``/tmp/clipserve-bench/k400``: 24 videos, 4 classes, ≤ 4 s, 170×128 px).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.memory import descendants  # noqa: E402
from benchmarks.service import _ensure_dataset, _Service, _settings  # noqa: E402

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND
    except (OSError, ValueError, IndexError):
        return 0.0


class CpuMeter:
    """CPU seconds used by the service process, its workers and this process (the load generator)."""

    def __init__(self, service_pid: int) -> None:
        self.service_pid = service_pid

    def read(self) -> dict[str, float]:
        return {
            "service": cpu_seconds(self.service_pid),
            "workers": sum(cpu_seconds(pid) for pid in descendants(self.service_pid)),
            "load_generator": cpu_seconds(os.getpid()),
        }

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before[name], 2) for name in before}


class LoadGenerator:
    """Bursts of ``concurrency`` simultaneous requests, back to back, in a thread of its own."""

    def __init__(self, url: str, *, concurrency: int, num_videos: int, sheet_fraction: float,
                 stats_fraction: float, nice: int = 0, seed: int = 0) -> None:
        self.url = url
        self.nice = nice
        self.concurrency = concurrency
        self.num_videos = num_videos
        self.sheet_fraction = sheet_fraction
        self.stats_fraction = stats_fraction
        self.random = random.Random(seed)
        self.statuses: Counter[str] = Counter()
        self.latencies_seconds: dict[str, list[float]] = {"plan": [], "sheet": [], "stats": []}
        self.bursts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _request(self) -> tuple[str, str]:
        draw = self.random.random()
        video, epoch = self.random.randrange(self.num_videos), self.random.randrange(100)
        if draw < self.sheet_fraction:
            return "sheet", f"/v1/videos/{video}/clips.png?epoch={epoch}"
        if draw < self.sheet_fraction + self.stats_fraction:
            return "stats", "/v1/stats"
        return "plan", f"/v1/videos/{video}/plan?epoch={epoch}"

    async def _one(self, client: Any, kind: str, path: str) -> None:
        import httpx

        started = time.perf_counter()
        try:
            response = await client.get(path)
            self.statuses[str(response.status_code)] += 1
        except httpx.HTTPError as error:
            self.statuses[type(error).__name__] += 1
        self.latencies_seconds[kind].append(time.perf_counter() - started)

    async def _run(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=120.0) as client:
            while not self._stop.is_set():
                burst = [self._request() for _ in range(self.concurrency)]
                await asyncio.gather(*(self._one(client, kind, path) for kind, path in burst))
                self.bursts += 1

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._thread.start()

    def _thread_main(self) -> None:
        if self.nice:  # Linux: a thread's nice value is its own
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        asyncio.run(self._run())

    def stop(self) -> None:
        """Ask for no new burst and wait for the current one to be answered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(300)

    def summary(self) -> dict[str, Any]:
        total = sum(self.statuses.values())
        non_2xx = sum(n for status, n in self.statuses.items() if not status.startswith("2"))
        latency = {}
        for kind, values in self.latencies_seconds.items():
            if values:
                ordered = sorted(values)
                latency[kind] = {"count": len(values), "median_seconds": statistics.median(ordered),
                                 "p99_seconds": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}
        return {"requests": total, "bursts": self.bursts, "statuses": dict(self.statuses), "non_2xx": non_2xx,
                "latency": latency}


def _num_videos(url: str) -> int:
    import httpx

    return int(httpx.get(url + "/v1/info", timeout=60).json()["num_videos"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="K400-layout dataset (default: a small synthetic one)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per window")
    parser.add_argument("--repeats", type=int, default=4, help="pairs of windows (undisturbed, loaded)")
    parser.add_argument("--concurrency", type=int, default=200, help="simultaneous requests per burst")
    parser.add_argument("--sheet-fraction", type=float, default=0.1, help="share of contact-sheet requests")
    parser.add_argument("--stats-fraction", type=float, default=0.3, help="share of /v1/stats requests")
    parser.add_argument("--generator-nice", type=int, default=19,
                        help="nice value of the load generator's thread (it shares the machine's CPUs with the "
                             "service: 19 = it only takes CPU time nobody else wants; 0 = compete)")
    parser.add_argument("--num-clips", type=int, default=2, help="ρ")
    parser.add_argument("--frames-per-clip", type=int, default=8, help="T (frames)")
    parser.add_argument("--frame-stride", type=int, default=8, help="τ (frames)")
    parser.add_argument("--crop-size", type=int, default=112, help="output size (pixels)")
    parser.add_argument("--batch-size", type=int, default=8, help="B (videos)")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: CPU cores)")
    parser.add_argument("--prefetch-batches", type=int, default=4, help="batches in flight / ring slots")
    args = parser.parse_args()
    args.transport = "shm"
    if args.workers is None:
        args.workers = max(1, len(os.sched_getaffinity(0)))
    warmup = 2 * args.prefetch_batches + 2  # what the ring buffered while the consumer was idle

    root = _ensure_dataset(args.root)
    undisturbed: list[float] = []
    loaded: list[float] = []
    ratios: list[float] = []
    cpu: dict[str, list[dict[str, float]]] = {"undisturbed": [], "loaded": []}
    with tempfile.TemporaryDirectory(prefix="clipserve-load-") as tmp:
        served = _Service(root, args, Path(tmp) / "service.log")
        url = served.consumer.args[3]  # the consumer's command line: [python, script, --consume, URL, ...]
        load = LoadGenerator(url, concurrency=args.concurrency, num_videos=_num_videos(url),
                             sheet_fraction=args.sheet_fraction, stats_fraction=args.stats_fraction,
                             nice=args.generator_nice)
        try:
            served.window(warmup, 1)  # consumer attached, workers warm
            meter = CpuMeter(served.process.pid)
            for _ in range(args.repeats):
                before = meter.read()
                undisturbed.append(served.window(warmup, args.batches))
                cpu["undisturbed"].append(meter.delta(before, meter.read()))
                load.start()
                before = meter.read()
                try:
                    loaded.append(served.window(warmup, args.batches))
                    cpu["loaded"].append(meter.delta(before, meter.read()))  # before the last burst drains
                finally:
                    load.stop()
                ratios.append(loaded[-1] / undisturbed[-1])
            healthy = _num_videos(url) > 0
            service_alive = served.process.poll() is None
        finally:
            served.close()
    ratio = statistics.median(ratios)
    load_summary = load.summary()
    result = {
        "benchmark": "load",
        "root": str(root),
        "settings": _settings(args),
        "batches_per_window": args.batches,
        "warmup_batches": warmup,
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "generator_nice": args.generator_nice,
        "mix": {"sheet": args.sheet_fraction, "stats": args.stats_fraction,
                "plan": 1 - args.sheet_fraction - args.stats_fraction},
        "undisturbed_clips_per_second": undisturbed,
        "loaded_clips_per_second": loaded,
        "paired_ratios": ratios,
        "loaded_over_undisturbed": ratio,
        "target_ratio": 0.90,
        "meets_target": ratio >= 0.90,
        "rest": load_summary,
        "cpu_seconds_per_window": cpu,
        "service_alive_after": service_alive and healthy,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "load_average_1m": os.getloadavg()[0]},
    }
    print(json.dumps(result, indent=1))
    print(f"load: consumer {statistics.median(loaded):.1f} clips/s under {args.concurrency}-request bursts vs "
          f"{statistics.median(undisturbed):.1f} undisturbed = {100 * ratio:.1f}% (target ≥ 90%); "
          f"{load_summary['requests']} requests, {load_summary['non_2xx']} non-2xx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
