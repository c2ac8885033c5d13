"""``make demo``: run as much of clipserve's main job as exists, one numbered step at a time.

    python -m clipserve.demo --root data/sample-k400

Steps today: (1) build the sample dataset if it is missing, (2) index its train split. Each step is
a function ``step_x(state)`` listed in ``STEPS``; it reads and fills the shared :class:`DemoState`.
To grow the demo, append steps (start the service in the background, run the trainer ~30 s, print
throughput and the inspect URL); a step that starts a process should record it in the state and
:func:`main` should stop it in a ``finally`` clause, so Ctrl-C leaves nothing running.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipserve.errors import ClipserveError
from clipserve.sample_data import SampleBuildResult, build_sample, make_sample_spec


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


STEPS: list[tuple[str, Callable[[DemoState], None]]] = [
    ("sample dataset", step_dataset),
    ("video index (train split)", step_index),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipserve.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/sample-k400"), help="sample dataset folder")
    parser.add_argument("--classes", type=int, default=8, help="classes of the sample dataset")
    parser.add_argument("--videos-per-class", type=int, default=12, help="videos per class")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    args = parser.parse_args(argv)
    state = DemoState(root=args.root, num_classes=args.classes, videos_per_class=args.videos_per_class,
                      workers=args.workers)
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
        return 130
    print(f"\ndemo done in {time.perf_counter() - started:.1f} s")
    for line in state.summary_lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
