"""``make demo``: run as much of clipserve's main job as exists, one numbered step at a time.

    python -m clipserve.demo --root data/sample-k400

Steps: (1) build the sample dataset if it is missing, (2) index its train split, (3) start
``clipserve start`` in the background on a free loopback port, (4) run the trainer (ρSimCLR by default, tiny
backbone) against the stream for ~30 s, (5) print throughput, save a contact sheet and print the
command that serves the same page again, then stop the service cleanly (``--keep-serving`` keeps it
up until Ctrl-C and prints its URL instead). Each step
is a function ``step_x(state)`` listed in ``STEPS``; it reads and fills the shared
:class:`DemoState`; the service is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipserve.errors import ClipserveError, DatasetError
from clipserve.sample import SampleBuildResult, build_sample, make_sample_spec

SERVICE_START_TIMEOUT_SECONDS = 600
OBJECTIVE_NAMES = {"moco": "MoCo", "byol": "BYOL", "simclr": "SimCLR", "swav": "SwAV"}


@dataclass
class DemoState:
    """What the steps share: the arguments, and what each step produced."""

    root: Path
    num_classes: int = 8
    videos_per_class: int = 12
    workers: int | None = None
    dataset: SampleBuildResult | None = None
    index: Any = None
    """``clipserve.datasets.index.VideoIndex`` of the train split, once the index step ran."""
    summary_lines: list[str] = field(default_factory=list)
    """One line per step for the final summary."""
    output_dir: Path = Path(".demo")
    """Where the trainer's checkpoint/metrics and the contact sheet go."""
    crop_size_pixels: int = 112
    batch_size: int = 8
    train_seconds: float = 30.0
    keep_serving: bool = False
    objective: str = "simclr"
    """Objective the demo trains (ρSimCLR: its loss falls visibly within 30 s on the CPU; ρMoCo's
    rises at first while its queue of negatives fills with real keys)."""
    service: subprocess.Popen | None = None
    service_output: threading.Thread | None = None
    url: str = ""


def step_dataset(state: DemoState) -> None:
    """Build the sample dataset under ``state.root`` unless it is already complete."""
    spec = make_sample_spec(state.num_classes, state.videos_per_class)
    state.dataset = build_sample(state.root, spec, workers=state.workers)
    print(state.dataset.summary())
    state.summary_lines.append(
        f"dataset  {state.dataset.num_videos} videos, {len(spec.class_names)} classes, "
        f"{state.dataset.total_video_seconds / 3600:.2f} h at {state.root}")


def step_index(state: DemoState) -> None:
    """Probe the train split once (cached); skipped while the index module is not there yet."""
    try:
        from clipserve.datasets.index import build_index
    except ImportError as exc:
        print(f"skipped: the video index is not available yet ({exc})")
        state.summary_lines.append("index    skipped (not available yet)")
        return
    state.index = build_index(state.root, dataset="k400", split="train", workers=state.workers)
    summary = state.index.summary()
    try:
        from clipserve.commands.index import format_summary

        print(format_summary(summary))
    except ImportError:
        print(summary.model_dump_json(indent=2))
    state.summary_lines.append(
        f"index    {summary.num_ok} ok, {summary.num_broken} broken train videos "
        f"({summary.num_probed} probed now, {summary.num_reused} from the cache)")


def step_service(state: DemoState) -> None:
    """Start ``clipserve start`` in the background on a free loopback port; wait for its ready line."""
    command = [sys.executable, "-m", "clipserve", "start", *serve_flags(state, port=0)]
    print("$ " + " ".join(command), flush=True)
    state.service = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_SECONDS
    assert state.service.stdout is not None
    while time.monotonic() < deadline:
        line = state.service.stdout.readline()
        if not line:
            raise DatasetError(f"the service exited during start-up (status {state.service.wait()}); see the log above")
        print(line, end="", flush=True)
        match = re.search(r"serving \d+ videos at (http://\S+)", line)
        if match:
            state.service_output = threading.Thread(target=_forward_lines, args=(state.service.stdout,), daemon=True)
            state.service_output.start()
            state.url = match.group(1).rstrip("/")
            state.summary_lines.append(f"service  {state.url} ({line.split('(backend ')[-1].split(')')[0]} backend)")
            return
    raise DatasetError(f"the service did not become ready within {SERVICE_START_TIMEOUT_SECONDS} s")


def serve_flags(state: DemoState, *, port: int) -> list[str]:
    """The ``clipserve start`` flags of the demo's service (the same page and sheets on any ``port``)."""
    flags = ["--dataset", "k400", "--root", str(state.root), "--port", str(port), "--crop-size",
             str(state.crop_size_pixels), "--batch-size", str(state.batch_size), "--num-clips", "2",
             "--frames-per-clip", "8", "--frame-stride", "8"]
    return flags + (["--workers", str(state.workers)] if state.workers is not None else [])


def step_trainer(state: DemoState) -> None:
    """Run the trainer (``state.objective``, tiny backbone, CPU profile) against the service for ~30 s."""
    checkpoint_dir = state.output_dir / "trainer"
    command = [sys.executable, "-m", "trainer", "--objective", state.objective, "--server", state.url, "--backbone", "tiny",
               "--profile", "cpu", "--max-steps", "500", "--max-seconds", str(state.train_seconds),
               "--log-every-steps", "5", "--checkpoint-dir", str(checkpoint_dir)]
    print("$ " + " ".join(command), flush=True)
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        raise DatasetError(f"the trainer exited with status {status}")
    metrics = [json.loads(line) for line in (checkpoint_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if metrics:
        last = metrics[-1]
        rates = [m["clips_per_second"] for m in metrics[1:]] or [last["clips_per_second"]]
        state.summary_lines.append(
            f"trainer  {last['step']} ρ{OBJECTIVE_NAMES[state.objective]} steps, loss {metrics[0]['loss']:.3f} -> {last['loss']:.3f}, "
            f"{sum(rates) / len(rates):.1f} clips/s consumed, {100 * last['data_wait_fraction']:.0f}% of time waiting for data")


def step_inspect(state: DemoState) -> None:
    """Print the service's throughput and save a contact sheet of one video's sampled clips."""
    stats = _get_json(f"{state.url}/v1/stats")
    since = stats["since_start"]
    print(json.dumps({k: stats[k] for k in ("clips_delivered_total", "videos_delivered_total", "decode_errors_total",
                                            "substitutions_total", "stage_seconds_total")}, indent=2))
    state.summary_lines.append(
        f"served   {stats['clips_delivered_total']} clips in {stats['batches_delivered_total']} batches, "
        f"{since.get('clips_per_second', 0.0):.1f} clips/s since start, {stats['decode_errors_total']} decode errors")
    sheet = state.output_dir / "clips-video0-epoch0.png"
    with urllib.request.urlopen(f"{state.url}/v1/videos/0/clips.png?epoch=0", timeout=120) as response:
        sheet.write_bytes(response.read())
    state.summary_lines.append(f"sheet    {sheet} (one row per clip, its T augmented frames)")
    state.summary_lines.extend(inspect_lines(state))


INSPECT_PORT = 8000
"""The port of the command printed to serve the demo's page again once the demo stopped."""


def inspect_lines(state: DemoState) -> list[str]:
    """Where to browse the plans and contact sheets: the live URL while the service keeps serving
    (``--keep-serving``), else the command that serves the same page (the demo's service stops)."""
    if state.keep_serving:
        return [f"inspect  {state.url}/#video=0&epoch=0 (serving until Ctrl-C; plan JSON: "
                f"{state.url}/v1/videos/0/plan?epoch=0)"]
    command = " ".join([".venv/bin/clipserve", "start", *serve_flags(state, port=INSPECT_PORT)])
    return ["inspect  the demo's service has stopped; to browse the same plans and contact sheets, run",
            f"           {command}",
            f"         and open http://127.0.0.1:{INSPECT_PORT}/#video=0&epoch=0 "
            f"(or keep the demo's own service up: make demo DEMO_ARGS=--keep-serving)"]


def _forward_lines(stream: Any) -> None:
    """Copy the service's later stdout to ours, so its pipe never fills up."""
    for line in stream:
        print(line, end="", flush=True)


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def stop_service(state: DemoState) -> None:
    """SIGTERM the service (it removes its shared memory and joins its workers) and wait for it."""
    if state.service is None:
        return
    if state.service.poll() is None:
        state.service.send_signal(signal.SIGTERM)
        try:
            state.service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            state.service.kill()
            state.service.wait()
    if state.service_output is not None:
        state.service_output.join(timeout=10)  # EOF once the service has exited
    if state.service.stdout is not None:
        state.service.stdout.close()


STEPS: list[tuple[str, Callable[[DemoState], None]]] = [
    ("sample dataset", step_dataset),
    ("video index (train split)", step_index),
    ("start the service (background)", step_service),
    ("train against the stream", step_trainer),
    ("throughput and inspection", step_inspect),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipserve.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/sample-k400"), help="sample dataset folder")
    parser.add_argument("--classes", type=int, default=8, help="classes of the sample dataset")
    parser.add_argument("--videos-per-class", type=int, default=12, help="videos per class")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    parser.add_argument("--train-seconds", type=float, default=30.0, help="seconds the trainer runs")
    parser.add_argument("--crop-size", type=int, default=112, help="output height/width of the clips, pixels")
    parser.add_argument("--output-dir", type=Path, default=Path(".demo"), help="trainer output and contact sheet")
    parser.add_argument("--keep-serving", action="store_true", help="keep the service running until Ctrl-C")
    parser.add_argument("--objective", choices=sorted(OBJECTIVE_NAMES), default="simclr", help="objective to train")
    args = parser.parse_args(argv)
    state = DemoState(root=args.root, num_classes=args.classes, videos_per_class=args.videos_per_class,
                      workers=args.workers, output_dir=args.output_dir, crop_size_pixels=args.crop_size,
                      train_seconds=args.train_seconds, keep_serving=args.keep_serving, objective=args.objective)
    state.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        for number, (title, step) in enumerate(STEPS, start=1):
            print(f"\n[{number}/{len(STEPS)}] {title}", flush=True)
            step(state)
    except ClipserveError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        stop_service(state)
        return 130
    except BaseException:
        stop_service(state)
        raise
    print(f"\ndemo done in {time.perf_counter() - started:.1f} s")
    for line in state.summary_lines:
        print(f"  {line}")
    try:
        if state.keep_serving and state.service is not None:
            print(f"\nserving at {state.url}/ until Ctrl-C (Ctrl-C stops the service)", flush=True)
            state.service.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_service(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
