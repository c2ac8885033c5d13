"""Benchmark: clips/s delivered into a separate consumer process vs the in-process producer.

Both sides use the same dataset, configs and number of decode workers:

  - ``in_process``: ``BatchProducer(...).batches()`` iterated in this process (no transport);
  - ``service``: ``python -m clipserve start`` as a subprocess and a consumer subprocess reading
    ``ClipStream`` batches through the shared-memory ring (``--transport http`` for the HTTP stream).

Both sides are started once and then measured in ``--repeats`` paired windows (in-process, then
service), so that the load of a shared machine affects both alike; the median of the per-pair
ratios is reported. Each window skips ``--warmup-batches`` batches (at least 2 × prefetch + 2:
what a side decoded ahead while idle waits in its ring / prefetch queue and would inflate its
rate) and times ``--batches`` batches. Target: service ≥ 97 % of in-process.
Prints one JSON object and a one-line summary.

    .venv/bin/python benchmarks/service.py [--root DIR] [--batches 30] [--workers N] [--crop-size 112]

Without ``--root`` a small synthetic K400-layout dataset is built (once) under
``/tmp/clipserve-bench/k400`` (24 videos, 4 classes, ≤ 4 s, 170×128 px).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"serving \d+ videos at (http://\S+?)/? ")


def add_service_arguments(parser: argparse.ArgumentParser, *, frames_per_clip: int = 8, frame_stride: int = 8,
                          crop_size: int = 112, batch_size: int = 8) -> None:
    """The service settings every service benchmark takes (read back by ``_settings``)."""
    parser.add_argument("--num-clips", type=int, default=2, help="ρ")
    parser.add_argument("--frames-per-clip", type=int, default=frames_per_clip, help="T (frames)")
    parser.add_argument("--frame-stride", type=int, default=frame_stride, help="τ (frames)")
    parser.add_argument("--crop-size", type=int, default=crop_size, help="output size (pixels)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="B (videos)")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: CPU cores)")
    parser.add_argument("--prefetch-batches", type=int, default=4, help="batches in flight / ring slots")
    parser.add_argument("--control-plane-nice", type=int, default=None,
                        help="the service's --control-plane-nice (default: the service's default, 19)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "num_clips": args.num_clips,
        "frames_per_clip": args.frames_per_clip,
        "frame_stride": args.frame_stride,
        "crop_size_pixels": args.crop_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "prefetch_batches": args.prefetch_batches,
        "seed": 0,
        "backend": "pyav",
        **({"control_plane_nice": args.control_plane_nice} if args.control_plane_nice is not None else {}),
    }


def _ensure_dataset(root: Path | None) -> Path:
    if root is not None:
        return root
    from clipserve.sample import build_sample, make_sample_spec

    root = Path("/tmp/clipserve-bench/k400")
    spec = make_sample_spec(num_classes=4, videos_per_class=6, max_duration_seconds=4.0, frame_scale=0.5, seed=1)
    build_sample(root, spec, progress=False)
    return root


class _InProcess:
    """The reference: a ``BatchProducer`` iterated in this process (no transport)."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        from clipserve.executors.pool import BatchProducer
        from clipserve.service import build_service_index
        from clipserve.settings import load_service_config

        config = load_service_config({"root": root, **_settings(args)})
        index = build_service_index(config, progress=False)
        self.producer = BatchProducer(index, sampling=config.sampling(), augment=config.augment(),
                                      batch_size=config.batch_size, seed=config.seed,
                                      workers=config.resolved_workers(), prefetch_batches=config.prefetch_batches)
        self.batches = self.producer.batches(0, 0)

    def window(self, warmup: int, timed: int) -> float:
        return _timed_window(self.batches, warmup, timed)

    def close(self) -> None:
        self.producer.close()


def _timed_window(batches: Any, warmup: int, timed: int) -> float:
    """Skip ``warmup`` batches (what was buffered while idle), then return clips/s over ``timed``."""
    for _ in range(warmup):
        next(batches)
    started = time.perf_counter()
    clips = 0
    for _ in range(timed):
        batch = next(batches)
        clips += batch.clips.shape[0] * batch.clips.shape[1]
    return clips / (time.perf_counter() - started)


def _start_service(root: Path, args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    flags = {"num_clips": "--num-clips", "frames_per_clip": "--frames-per-clip", "frame_stride": "--frame-stride",
             "crop_size_pixels": "--crop-size", "batch_size": "--batch-size", "workers": "--workers",
             "prefetch_batches": "--prefetch-batches", "seed": "--seed", "backend": "--backend",
             "control_plane_nice": "--control-plane-nice"}
    command = [sys.executable, "-m", "clipserve", "start", "--dataset", "k400", "--root", str(root), "--port", "0",
               "--no-progress", "--log-level", "warning"]
    for key, value in _settings(args).items():
        command += [flags[key], str(value)]
    return launch_service(command, log_path)


def launch_service(command: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Run a ``clipserve start`` command line (its own session, no ``CLIPSERVE_*`` variables, output
    to ``log_path``) and wait up to 180 s for its ready line; returns (process, base URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSERVE_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                   start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        match = READY.search(log_path.read_text(errors="replace"))
        if match:
            return process, match.group(1).rstrip("/")
        if process.poll() is not None:
            break
        time.sleep(0.1)
    _stop(process)
    raise RuntimeError(f"service did not start:\n{log_path.read_text(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class _Service:
    """``clipserve start`` plus a consumer process that times windows on request (stdin/stdout)."""

    def __init__(self, root: Path, args: argparse.Namespace, log_path: Path) -> None:
        self.process, url = _start_service(root, args, log_path)
        command = [sys.executable, str(Path(__file__).resolve()), "--consume", url, "--transport", args.transport]
        self.consumer = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         cwd=REPO_ROOT)

    def window(self, warmup: int, timed: int) -> float:
        assert self.consumer.stdin is not None and self.consumer.stdout is not None
        self.consumer.stdin.write(f"{warmup} {timed}\n")
        self.consumer.stdin.flush()
        line = self.consumer.stdout.readline()
        if not line:
            raise RuntimeError("the consumer process died")
        return float(json.loads(line)["clips_per_second"])

    def close(self) -> None:
        if self.consumer.stdin is not None:
            self.consumer.stdin.close()
        try:
            self.consumer.wait(30)
        except subprocess.TimeoutExpired:
            self.consumer.kill()
        _stop(self.process)


def _consume(url: str, args: argparse.Namespace) -> int:
    """Consumer process: for each stdin line "WARMUP TIMED", time a window; print JSON per window."""
    from clipserve.client import ClipStream

    with ClipStream(url, transport=args.transport, timeout_seconds=300, reconnect_timeout_seconds=30) as stream:
        batches = iter(stream)
        for line in sys.stdin:
            warmup, timed = (int(v) for v in line.split())
            print(json.dumps({"clips_per_second": _timed_window(batches, warmup, timed)}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="K400-layout dataset (default: a small synthetic one)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per window")
    parser.add_argument("--warmup-batches", type=int, default=None,
                        help="batches skipped before timing (default and minimum: 2 × prefetch + 2, so the "
                             "batches buffered in the ring while the consumer starts are drained first)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="paired windows (in-process then service); the median ratio is reported")
    parser.add_argument("--transport", default="shm", choices=["shm", "http"])
    add_service_arguments(parser)
    parser.add_argument("--consume", metavar="URL", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        return _consume(args.consume, args)
    args.warmup_batches = max(args.warmup_batches or 0, 2 * args.prefetch_batches + 2)
    if args.workers is None:
        args.workers = max(1, len(os.sched_getaffinity(0)))

    root = _ensure_dataset(args.root)
    in_process, service, ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="clipserve-bench-") as tmp:
        reference = _InProcess(root, args)
        served = _Service(root, args, Path(tmp) / "service.log")
        try:
            for _ in range(args.repeats):  # paired windows, close in time: machine load hits both alike
                in_process.append(reference.window(args.warmup_batches, args.batches))
                service.append(served.window(args.warmup_batches, args.batches))
                ratios.append(service[-1] / in_process[-1])
        finally:
            served.close()
            reference.close()
    in_rate, service_rate = statistics.median(in_process), statistics.median(service)
    ratio = statistics.median(ratios)
    result = {
        "benchmark": "service",
        "transport": args.transport,
        "root": str(root),
        "settings": _settings(args),
        "batches": args.batches,
        "warmup_batches": args.warmup_batches,
        "repeats": args.repeats,
        "in_process_clips_per_second": in_process,
        "service_clips_per_second": service,
        "in_process_median_clips_per_second": in_rate,
        "service_median_clips_per_second": service_rate,
        "paired_ratios": ratios,
        "service_over_in_process": ratio,
        "target_ratio": 0.97,
        "meets_target": ratio >= 0.97,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "load_average_1m": os.getloadavg()[0]},
    }
    print(json.dumps(result, indent=1))
    print(f"service ({args.transport}): {service_rate:.1f} clips/s into a consumer process vs "
          f"{in_rate:.1f} clips/s in process = {100 * ratio:.1f}% (target ≥ 97%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
