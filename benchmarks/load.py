"""Benchmark: a consumer's throughput while the REST control plane serves 200 concurrent requests.

``python -m clipserve start`` runs as a subprocess with a consumer process reading ``ClipStream``
batches (shared memory, the consumer of ``benchmarks/service.py``). The run alternates windows:

  - ``undisturbed``: the consumer times ``--batches`` batches, no REST traffic;
  - ``loaded``: the same, while a load-generator process keeps ``--concurrency`` (200) requests in
    flight (``--mode closed-loop``: each of 200 connections sends its next request as soon as the
    previous one is answered; ``--mode bursts``: 200 at once, the next burst when all are answered):
    plans (``/v1/videos/{i}/plan``, random video and epoch), contact sheets
    (``/v1/videos/{i}/clips.png``, decoded by the service) and ``/v1/stats``.

The ratio loaded / undisturbed of each pair of windows is reported (pairs alternate their order, so
a drift of the machine's speed cancels out), and their median (target ≥ 0.90),
with every non-2xx answer and transport error counted, request latencies, and the CPU seconds per
window of the service's REST process, its data-plane process, its decode workers, its
contact-sheet processes and the load generator (these include the batches the ring buffered
before a window, so compare CPU within a window type, not across). Prints one JSON object and a
one-line summary.

The generator is a process of its own (its own session, hence its own scheduler autogroup on
Linux) with a minimal asyncio HTTP/1.1 client: tens of microseconds of CPU per request, so that on
a small machine the measurement charges the service for answering, not the generator for asking.

    .venv/bin/python benchmarks/load.py [--root DIR] [--repeats 10] [--batches 30] [--workers N]
        [--control-plane-nice 0..19] [--mode closed-loop|bursts] [--generator-nice 0..19]

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
import subprocess
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

from benchmarks.memory import descendants, is_data_plane  # noqa: E402
from benchmarks.service import _ensure_dataset, _Service, _settings, add_service_arguments  # noqa: E402

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
    """CPU seconds used by the service's REST process, its data-plane process, the decode workers (and
    their forkserver), the contact-sheet processes, and the load generator process."""

    def __init__(self, service_pid: int, generator_pid: int) -> None:
        self.service_pid = service_pid
        self.generator_pid = generator_pid

    def read(self) -> dict[str, float]:
        children = set(descendants(self.service_pid))
        data_plane = [pid for pid in children if is_data_plane(pid)]
        workers = {worker for pid in data_plane for worker in descendants(pid)}
        return {
            "rest": cpu_seconds(self.service_pid),
            "data_plane": sum(cpu_seconds(pid) for pid in data_plane),
            "decode_workers": sum(cpu_seconds(pid) for pid in workers),
            "contact_sheets": sum(cpu_seconds(pid) for pid in children - workers - set(data_plane)),
            "load_generator": cpu_seconds(self.generator_pid),
        }

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before[name], 2) for name in before}


#: A request not answered within this many seconds counts as a failure (``TimeoutError``).
REQUEST_TIMEOUT_SECONDS = 120.0


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads whole answers.

    Hand-written on asyncio streams because a general client costs the generator 3-6 ms of CPU per
    request (httpx, measured: 1.1-2.2 CPU-seconds per window), CPU the service would otherwise use on
    a small machine; this costs tens of microseconds. Reconnects when the server closes.
    """

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        """Status code of ``GET path`` (body read and dropped)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        if "content-length" not in headers:
            raise ValueError(f"answer without Content-Length to GET {path}")
        await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.reset()
        return status

    async def reset(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None


class LoadGenerator:
    """``concurrency`` simultaneous requests, in a thread of its own, in one of two modes:

    - ``closed-loop`` (default): ``concurrency`` connections, each sending its next request as soon
      as the previous one is answered, so ``concurrency`` requests are always in flight;
    - ``bursts``: ``concurrency`` requests at once, the next burst when all are answered (the load
      thins out while the slowest requests of a burst, contact sheets, finish).

    Runs inside the generator process (``GeneratorProcess``), never in the benchmark's own process.
    """

    def __init__(self, url: str, *, concurrency: int, num_videos: int, sheet_fraction: float,
                 stats_fraction: float, mode: str = "closed-loop", seed: int = 0) -> None:
        self.url = url
        self.mode = mode
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

    async def _one(self, connection: "_Connection", kind: str, path: str) -> None:
        started = time.perf_counter()
        try:
            status = await asyncio.wait_for(connection.get(path), REQUEST_TIMEOUT_SECONDS)
            self.statuses[str(status)] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as error:
            self.statuses[type(error).__name__] += 1
            await connection.reset()
        self.latencies_seconds[kind].append(time.perf_counter() - started)

    async def _run(self) -> None:
        connections = [_Connection(self.url) for _ in range(self.concurrency)]
        try:
            if self.mode == "bursts":
                while not self._stop.is_set():
                    burst = [self._request() for _ in range(self.concurrency)]
                    await asyncio.gather(*(self._one(c, kind, path) for c, (kind, path) in zip(connections, burst)))
                    self.bursts += 1
            else:
                await asyncio.gather(*(self._keep_asking(connection) for connection in connections))
        finally:
            for connection in connections:
                await connection.reset()

    async def _keep_asking(self, connection: "_Connection") -> None:
        """Closed loop: the next request as soon as the previous one is answered, until stopped."""
        while not self._stop.is_set():
            await self._one(connection, *self._request())

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

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


def lower_own_priority(nice: int) -> None:
    """Give this process (already the leader of a new session) ``nice``, and its autogroup the same.

    Linux groups the processes of one session into an *autogroup* and shares the CPUs fairly between
    autogroups first (``/proc/sys/kernel/sched_autogroup_enabled``): a thread at nice 19 in its own
    session still gets half of the machine while the service's session is busy. Writing the
    autogroup's nice value (allowed without privileges when lowering priority) makes the whole
    session yield, so the generator only takes CPU time the service and the consumer leave idle.
    """
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:  # no autogroup scheduling (or not Linux): the process nice value alone
        pass
    os.setpriority(os.PRIO_PROCESS, 0, nice)


def _generate(url: str, args: argparse.Namespace) -> int:
    """Generator process: ``start``/``stop`` lines from stdin toggle the load; at EOF print the summary."""
    lower_own_priority(args.generator_nice)
    load = LoadGenerator(url, concurrency=args.concurrency, num_videos=_num_videos(url),
                         sheet_fraction=args.sheet_fraction, stats_fraction=args.stats_fraction, mode=args.mode)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "start":
            load.start()
        else:
            load.stop()
        print(line.strip(), flush=True)
    print(json.dumps(load.summary()), flush=True)
    return 0


class GeneratorProcess:
    """The load generator in a process of its own session (see ``lower_own_priority``).

    Its own session puts it in its own scheduler autogroup, so ``--generator-nice`` (default 0: it
    competes like any other client) sets its priority against the service for real.
    """

    def __init__(self, url: str, args: argparse.Namespace) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--generate", url,
                   "--concurrency", str(args.concurrency), "--sheet-fraction", str(args.sheet_fraction),
                   "--stats-fraction", str(args.stats_fraction), "--generator-nice", str(args.generator_nice),
                   "--mode", args.mode]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=REPO_ROOT, start_new_session=True)
        self._command_and_wait("")  # the "ready" line

    def _command_and_wait(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        if command:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the load generator process died")
        return line.strip()

    def start(self) -> None:
        self._command_and_wait("start")

    def stop(self) -> None:
        """Returns when the burst in flight has been answered."""
        self._command_and_wait("stop")

    def close(self) -> dict[str, Any]:
        """Stop the process; its summary (``LoadGenerator.summary``)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        summary = json.loads(self.process.stdout.read().strip().splitlines()[-1])
        self.process.wait(60)
        return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="K400-layout dataset (default: a small synthetic one)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per window")
    parser.add_argument("--repeats", type=int, default=10,
                        help="pairs of windows (undisturbed then loaded, and the other way round in odd pairs)")
    parser.add_argument("--concurrency", type=int, default=200, help="simultaneous requests per burst")
    parser.add_argument("--mode", choices=["closed-loop", "bursts"], default="closed-loop",
                        help="closed-loop: --concurrency requests always in flight; bursts: --concurrency at once, "
                             "the next burst when all are answered")
    parser.add_argument("--sheet-fraction", type=float, default=0.1, help="share of contact-sheet requests")
    parser.add_argument("--stats-fraction", type=float, default=0.3, help="share of /v1/stats requests")
    parser.add_argument("--generator-nice", type=int, default=0,
                        help="nice value of the load generator's process and of its session's autogroup (it "
                             "shares the machine's CPUs with the service: 19 = it only takes CPU time nobody "
                             "else wants, as clients on other machines would; 0 = compete)")
    parser.add_argument("--generate", metavar="URL", default=None, help=argparse.SUPPRESS)
    add_service_arguments(parser)
    args = parser.parse_args()
    if args.generate:
        return _generate(args.generate, args)
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
        load = GeneratorProcess(url, args)
        try:
            served.window(warmup, 1)  # consumer attached, workers warm
            meter = CpuMeter(served.process.pid, load.process.pid)
            for pair in range(args.repeats):
                # alternate the order (U L, L U, ...) so that a drift of the machine's speed cancels out
                for kind in ("undisturbed", "loaded") if pair % 2 == 0 else ("loaded", "undisturbed"):
                    if kind == "loaded":
                        load.start()
                    before = meter.read()
                    try:
                        rate = served.window(warmup, args.batches)
                        cpu[kind].append(meter.delta(before, meter.read()))  # before the last requests drain
                    finally:
                        if kind == "loaded":
                            load.stop()
                    (loaded if kind == "loaded" else undisturbed).append(rate)
                ratios.append(loaded[-1] / undisturbed[-1])
            healthy = _num_videos(url) > 0
            service_alive = served.process.poll() is None
        finally:
            load_summary = load.close()
            served.close()
    ratio = statistics.median(ratios)
    result = {
        "benchmark": "load",
        "root": str(root),
        "settings": _settings(args),
        "batches_per_window": args.batches,
        "warmup_batches": warmup,
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "mode": args.mode,
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
    print(f"load: consumer {statistics.median(loaded):.1f} clips/s with {args.concurrency} requests in flight "
          f"({args.mode}) vs "
          f"{statistics.median(undisturbed):.1f} undisturbed = {100 * ratio:.1f}% (target ≥ 90%); "
          f"{load_summary['requests']} requests, {load_summary['non_2xx']} non-2xx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
