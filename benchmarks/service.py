"""Benchmark: clips/s delivered into a separate consumer process vs the in-process producer.

Both sides use the same dataset, configs and number of decode workers:

  - ``in_process``: ``BatchProducer(...).batches()`` iterated in this process (no transport);
  - ``service``: ``python -m clipserve start`` as a subprocess and a consumer subprocess reading
    ``ClipStream`` batches through the shared-memory ring (``--transport http`` for the HTTP stream).

Each side skips ``--warmup-batches`` and then times ``--batches`` batches; the warm-up is at least
2 × prefetch + 2 batches, because batches the service decodes while the consumer process starts
wait in the ring and would otherwise inflate the service's rate. With ``--repeats`` > 1 the sides
alternate and the median is reported. Target: service ≥ 97 % of in-process.
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
    }


def _ensure_dataset(root: Path | None) -> Path:
    if root is not None:
        return root
    from clipserve.sample_data import build_sample, make_sample_spec

    root = Path("/tmp/clipserve-bench/k400")
    spec = make_sample_spec(num_classes=4, videos_per_class=6, max_duration_seconds=4.0, frame_scale=0.5, seed=1)
    build_sample(root, spec, progress=False)
    return root


def _in_process(root: Path, args: argparse.Namespace) -> dict[str, float]:
    from clipserve.executors.pool import BatchProducer
    from clipserve.settings import load_service_config
    from clipserve.service import build_service_index

    config = load_service_config({"root": root, **_settings(args)})
    index = build_service_index(config, progress=False)
    with BatchProducer(index, sampling=config.sampling(), augment=config.augment(), batch_size=config.batch_size,
                       seed=config.seed, workers=config.resolved_workers(),
                       prefetch_batches=config.prefetch_batches) as producer:
        batches = producer.batches(0, 0)
        for _ in range(args.warmup_batches):
            next(batches)
        started = time.perf_counter()
        clips = 0
        for _ in range(args.batches):
            batch = next(batches)
            clips += batch.clips.shape[0] * batch.clips.shape[1]
        elapsed = time.perf_counter() - started
    return {"clips_per_second": clips / elapsed, "seconds": elapsed, "clips": clips}


def _start_service(root: Path, args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    flags = {"num_clips": "--num-clips", "frames_per_clip": "--frames-per-clip", "frame_stride": "--frame-stride",
             "crop_size_pixels": "--crop-size", "batch_size": "--batch-size", "workers": "--workers",
             "prefetch_batches": "--prefetch-batches", "seed": "--seed", "backend": "--backend"}
    command = [sys.executable, "-m", "clipserve", "start", "--dataset", "k400", "--root", str(root), "--port", "0",
               "--no-progress", "--log-level", "warning"]
    for key, value in _settings(args).items():
        command += [flags[key], str(value)]
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


def _service(root: Path, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="clipserve-bench-") as tmp:
        process, url = _start_service(root, args, Path(tmp) / "service.log")
        try:
            command = [sys.executable, str(Path(__file__).resolve()), "--consume", url, "--batches", str(args.batches),
                       "--warmup-batches", str(args.warmup_batches), "--transport", args.transport]
            result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)
            if result.returncode != 0:
                raise RuntimeError(f"consumer failed:\n{result.stdout}\n{result.stderr}")
            return json.loads(result.stdout.strip().splitlines()[-1])
        finally:
            _stop(process)


def _consume(url: str, args: argparse.Namespace) -> int:
    """Consumer process: time ``--batches`` batches after ``--warmup-batches``; print JSON."""
    from clipserve.client import ClipStream

    with ClipStream(url, transport=args.transport, timeout_seconds=300, reconnect_timeout_seconds=30) as stream:
        batches = iter(stream)
        for _ in range(args.warmup_batches):
            next(batches)
        started = time.perf_counter()
        clips = 0
        for _ in range(args.batches):
            batch = next(batches)
            clips += batch.clips.shape[0] * batch.clips.shape[1]
        elapsed = time.perf_counter() - started
    print(json.dumps({"clips_per_second": clips / elapsed, "seconds": elapsed, "clips": clips}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="K400-layout dataset (default: a small synthetic one)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per side")
    parser.add_argument("--warmup-batches", type=int, default=None,
                        help="batches skipped before timing (default and minimum: 2 × prefetch + 2, so the "
                             "batches buffered in the ring while the consumer starts are drained first)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side (median reported)")
    parser.add_argument("--transport", default="shm", choices=["shm", "http"])
    parser.add_argument("--num-clips", type=int, default=2, help="ρ")
    parser.add_argument("--frames-per-clip", type=int, default=8, help="T (frames)")
    parser.add_argument("--frame-stride", type=int, default=8, help="τ (frames)")
    parser.add_argument("--crop-size", type=int, default=112, help="output size (pixels)")
    parser.add_argument("--batch-size", type=int, default=8, help="B (videos)")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: CPU cores)")
    parser.add_argument("--prefetch-batches", type=int, default=4, help="batches in flight / ring slots")
    parser.add_argument("--consume", metavar="URL", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        return _consume(args.consume, args)
    args.warmup_batches = max(args.warmup_batches or 0, 2 * args.prefetch_batches + 2)
    if args.workers is None:
        args.workers = max(1, len(os.sched_getaffinity(0)))

    root = _ensure_dataset(args.root)
    in_process, service = [], []
    for _ in range(args.repeats):
        in_process.append(_in_process(root, args)["clips_per_second"])
        service.append(_service(root, args)["clips_per_second"])
    in_rate, service_rate = statistics.median(in_process), statistics.median(service)
    ratio = service_rate / in_rate
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
