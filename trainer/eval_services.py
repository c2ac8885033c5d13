"""Start ``clipserve start`` services for frozen-feature evaluation on a dataset split (subprocesses).

``eval_services(...)`` starts one service per split with the quick monitor's view (``trainer.eval``):
one clip per video at the temporal centre (``--num-clips 1 --temporal-sampling centre``), short side
resized and centre-cropped, no random augmentation (``--eval-mode``). ``dataset_services(...)`` starts
one service per (split, view), as ``trainer.linear`` and ``trainer.finetune`` need: an augmented
training stream and the multi-view test (``--temporal-sampling uniform --spatial-crops S``). It yields their URLs and stops them
(SIGTERM, then SIGKILL of the process group) on exit. The trainer talks to them only through
``clipserve.client``, as to any other service.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

READY_PATTERN = re.compile(r"serving (\d+) videos at (http://\S+?)/? ")
DEFAULT_TEST_SPLIT = {"ssv2": "val", "k400": "val", "k600": "val", "k700": "val", "folder": "val"}
"""The labelled held-out split of each dataset (ssv2's test split has no public labels); others: 'test'."""


@dataclass(frozen=True)
class EvalView:
    """What each evaluation service serves: T frames every τ frames, S×S pixels, B videos per batch.

    The defaults are ``trainer.eval``'s quick monitor: one clip at the temporal centre, centre crop.
    ``trainer.linear`` and ``trainer.finetune`` serve the multi-view test with ``temporal_sampling=
    'uniform'``, ``num_clips`` K and ``spatial_crops`` S, and their augmented training stream with
    ``augment_flags`` (``clipserve start`` flags used instead of ``--eval-mode``) and
    ``temporal_sampling='random'``.
    """

    frames_per_clip: int = 8
    frame_stride: int = 8
    crop_size_pixels: int = 224
    batch_size: int = 8
    workers: int | None = None
    backend: str = "auto"
    num_clips: int = 1
    temporal_sampling: str = "centre"
    spatial_crops: int = 1
    augment_flags: tuple[str, ...] | None = None
    """None: ``--eval-mode`` (no random augmentation); else these augmentation flags."""
    seed: int = 0
    prefetch_batches: int | None = None
    extra_flags: tuple[str, ...] = ()
    """More ``clipserve start`` flags (e.g. ``--target-fps 15``)."""


def service_command(dataset: str, root: Path, split: str, split_id: int, view: EvalView) -> list[str]:
    """The ``python -m clipserve start`` command line of one evaluation (or readout training) service."""
    augment = ["--eval-mode"] if view.augment_flags is None else list(view.augment_flags)
    command = [sys.executable, "-m", "clipserve", "start", "--dataset", dataset, "--root", str(root),
               "--split", split, "--split-id", str(split_id), *augment, "--num-clips", str(view.num_clips),
               "--temporal-sampling", view.temporal_sampling, "--frames-per-clip", str(view.frames_per_clip),
               "--frame-stride", str(view.frame_stride), "--crop-size", str(view.crop_size_pixels),
               "--batch-size", str(view.batch_size), "--backend", view.backend, "--host", "127.0.0.1",
               "--port", "0", "--no-progress"]
    if view.spatial_crops != 1:
        command += ["--spatial-crops", str(view.spatial_crops)]
    if view.seed:
        command += ["--seed", str(view.seed)]
    if view.workers is not None:
        command += ["--workers", str(view.workers)]
    if view.prefetch_batches is not None:
        command += ["--prefetch-batches", str(view.prefetch_batches)]
    return command + list(view.extra_flags)


@contextmanager
def eval_services(dataset: str, root: Path, splits: Sequence[str], split_id: int, view: EvalView, *,
                  timeout_seconds: float = 600.0) -> Iterator[list[str]]:
    """Start one evaluation service per split of ``splits``; yield their URLs (same order).

    Raises:
        RuntimeError: a service exited or did not become ready within ``timeout_seconds`` (the
            message holds the end of its log, e.g. the dataset error).
    """
    with dataset_services(dataset, root, [(split, view) for split in splits], split_id,
                          timeout_seconds=timeout_seconds) as urls:
        yield urls


@contextmanager
def dataset_services(dataset: str, root: Path, services: Sequence[tuple[str, EvalView]], split_id: int, *,
                     timeout_seconds: float = 600.0) -> Iterator[list[str]]:
    """Start one service per ``(split, view)`` of ``services``; yield their URLs (same order); stop
    them on exit. Errors as ``eval_services``."""
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="trainer-eval-") as folder:
        logs = [Path(folder) / f"{i}-{split}.log" for i, (split, _) in enumerate(services)]
        try:
            for (split, view), log in zip(services, logs):
                with open(log, "wb") as handle:
                    processes.append(subprocess.Popen(service_command(dataset, root, split, split_id, view),
                                                      stdout=handle, stderr=subprocess.STDOUT, start_new_session=True))
            yield [_wait_ready(p, log, timeout_seconds) for p, log in zip(processes, logs)]
        finally:
            for process in processes:
                stop_process_group(process)


def _wait_ready(process: subprocess.Popen[bytes], log: Path, timeout_seconds: float) -> str:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        match = READY_PATTERN.search(log.read_text(errors="replace"))
        if match:
            return match.group(2).rstrip("/")
        if process.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"clipserve start ({' '.join(process.args[3:11])} ...) did not become ready:\n{tail}")


def stop_process_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                       timeout_seconds: float = 30.0) -> None:
    """``sig`` to a process started in its own session, wait up to ``timeout_seconds``, then SIGKILL
    whatever is left of its process group (decode workers included) and reap it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # decode workers left behind, if any
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.kill()
        process.wait(10)
    if process.poll() is None:
        process.kill()
        process.wait(10)
