"""End to end: ``python -m trainer`` and ``python -m trainer.eval`` against the real service.

Everything is a real process: ``clipserve start`` (PyAV decoding of real H.264 files written at
fixture time, shared-memory transport) and the trainer CLI as a subprocess. Tiny sizes keep the
whole file well under a minute on a loaded 2-core machine: 2 classes × 3 videos of ≤ 3 s at about
86×64 px, ρ=2 clips of T=4 frames (τ=4) cropped to 32×32, batches of 2 videos, the tiny backbone.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.service_helpers import REPO_ROOT, RunningService, running_service, wait_for
from trainer.checkpoint import load_checkpoint

#: Small heads and queue so a step costs a fraction of a second on the CPU.
TRAINER_FLAGS = ["--profile", "cpu", "--backbone", "tiny", "--progress", "false", "--log-every-steps", "1",
                 "--mlp-hidden-dim", "32", "--output-dim", "16", "--moco-queue-size", "16", "--device", "cpu"]
PROCESS_TIMEOUT_SECONDS = 60.0


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes × 3 videos (2 train + 1 val each), ≤ 3 s, frames at a quarter of the sample size."""
    from clipserve.sample import build_sample, make_sample_spec

    root = tmp_path_factory.mktemp("e2e-data")
    spec = make_sample_spec(num_classes=2, videos_per_class=3, max_duration_seconds=3, frame_scale=0.25)
    build_sample(root, spec, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def train_service(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """The training split with aug+ (ρ=2, T=4, τ=4, 32 px, B=2, seed 7: ``SERVICE_SETTINGS``), one batch
    decoded ahead (``--prefetch-batches 1``: the content does not depend on it)."""
    log = tmp_path_factory.mktemp("e2e-logs") / "train-service.log"
    with running_service(dataset_root, log, extra_args=["--prefetch-batches", "1"]) as service:
        yield service


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSERVE_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # deterministic and polite on a shared machine
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                               env=_env())
    log.close()
    return process


def _finish(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """Wait for ``process`` (killing it on timeout); return its output; fail on a non-zero status."""
    try:
        process.wait(PROCESS_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    output = log_path.read_text(errors="replace")
    assert process.returncode == 0, f"{process.args} exited with {process.returncode}:\n{output}"
    return output


def _train(url: str, out: Path, *extra: str) -> str:
    log = out.with_suffix(".log")
    args = ["trainer", "--objective", "moco", "--server", url, "--max-steps", "4", "--checkpoint-dir", str(out),
            *TRAINER_FLAGS, *extra]
    return _finish(_start(args, log), log)


def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def straight_run(train_service: RunningService, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m trainer --objective moco --server URL --max-steps 4`` run straight through."""
    out = tmp_path_factory.mktemp("e2e-runs") / "straight"
    _train(train_service.url, out)
    return out


def test_moco_trains_four_steps_against_the_service(straight_run: Path) -> None:
    metrics = _metrics(straight_run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) and m["loss"] != 0.0 for m in metrics)
    # the stream position advanced through the service's epochs: 4 train videos / B=2 = 2 steps per epoch
    assert [(m["epoch"], m["stream_step"]) for m in metrics] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(m["clips_per_second"] > 0 and 0.0 <= m["data_wait_fraction"] <= 1.0 for m in metrics)
    ckpt = load_checkpoint(straight_run)
    assert ckpt["step"] == 4 and ckpt["num_clips"] == 2 and ckpt["config"]["server"].startswith("http://127.0.0.1:")
    assert ckpt["per_rank"][0]["stream"]["epoch"] == 2 and ckpt["per_rank"][0]["stream"]["step"] == 0
    assert ckpt["model"]["queue"].shape == (16, 16)  # ρ=2 key sets × B=2 × 4 steps = 16 keys enqueued
    assert torch.isfinite(ckpt["model"]["queue"]).all()


def test_run_killed_after_its_step_2_checkpoint_resumes_with_the_same_losses(
    train_service: RunningService, straight_run: Path, tmp_path: Path,
) -> None:
    """A run of 4 steps checkpointing every 2 is SIGKILLed (a crash / preemption) right after its
    step-2 checkpoint; ``--resume`` finishes it with the same per-step losses, bit for bit, as the
    uninterrupted run, reading the same batches from the same service."""
    out = tmp_path / "split"
    log = tmp_path / "split-first.log"
    process = _start(["trainer", "--objective", "moco", "--server", train_service.url, "--max-steps", "4",
                      "--checkpoint-dir", str(out), "--checkpoint-every-steps", "2", *TRAINER_FLAGS], log)
    try:
        # the service decodes one batch ahead only (--prefetch-batches 1), so the two steps left take
        # far longer than this 2 ms poll: the kill lands between step 2 and step 4
        wait_for(lambda: (out / "last.pt").exists() or process.poll() is not None, PROCESS_TIMEOUT_SECONDS,
                 "the step-2 checkpoint", interval_seconds=0.002)
        process.kill()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    stopped_at = int(load_checkpoint(out)["step"])
    assert stopped_at == 2, f"expected the periodic checkpoint of step 2, got step {stopped_at}:\n{log.read_text()}"
    assert load_checkpoint(out)["per_rank"][0]["stream"]["epoch"] == 1  # next batch: epoch 1, step 0

    _train(train_service.url, out, "--resume", "--checkpoint-every-steps", "2")
    split = _metrics(out)
    straight = _metrics(straight_run)
    steps = [m["step"] for m in split]
    assert steps in ([1, 2, 3, 4], [1, 2, 3, 3, 4]), split  # a step 3 logged just before the kill is redone
    split = [m for i, m in enumerate(split) if i + 1 == len(split) or split[i + 1]["step"] != m["step"]]
    assert [m["loss"] for m in split] == [m["loss"] for m in straight]  # exact
    assert [(m["epoch"], m["stream_step"]) for m in split] == [(m["epoch"], m["stream_step"]) for m in straight]
    ckpt = load_checkpoint(out)
    reference = load_checkpoint(straight_run)
    assert ckpt["step"] == 4
    assert torch.equal(ckpt["model"]["queue"], reference["model"]["queue"])
    assert all(torch.equal(ckpt["model"][k], reference["model"][k]) for k in reference["model"])


def test_eval_against_eval_mode_services_gives_a_knn_accuracy(
    straight_run: Path, dataset_root: Path, tmp_path: Path,
) -> None:
    """``python -m trainer.eval`` with the train split (memory bank) and the val split (queries), both
    served in evaluation mode (centre crops, no random augmentation)."""
    with running_service(dataset_root, tmp_path / "eval-train.log", extra_args=["--eval-mode"]) as bank, \
            running_service(dataset_root, tmp_path / "eval-val.log", extra_args=["--eval-mode", "--split", "val"]) as val:
        log = tmp_path / "eval.log"
        output = _finish(_start(["trainer.eval", "--checkpoint", str(straight_run), "--server", bank.url,
                                 "--val-server", val.url, "--k", "3", "--probe-steps", "20", "--device", "cpu"], log), log)
    result = json.loads(output.strip().splitlines()[-1])
    assert 0.0 <= result["knn_top1"] <= 1.0 and 0.0 <= result["linear_probe_top1"] <= 1.0
    assert result["num_train_videos"] == 4 and result["num_test_videos"] == 2  # every video once, no padding
    assert result["checkpoint_step"] == 4 and result["objective"] == "moco" and result["k"] == 3


def test_training_against_a_one_clip_service_is_a_one_line_error(dataset_root: Path, tmp_path: Path) -> None:
    """Issue 23, item 6: a service started with ``--num-clips 1`` is refused at attach time, naming
    the flag to change, instead of a traceback from inside the objective."""
    with running_service(dataset_root, tmp_path / "one-clip.log", extra_args=["--num-clips", "1"]) as service:
        result = subprocess.run([sys.executable, "-m", "trainer", "--objective", "moco", "--server", service.url,
                                 "--max-steps", "2", "--checkpoint-dir", str(tmp_path / "out"), *TRAINER_FLAGS],
                                capture_output=True, text=True, cwd=REPO_ROOT, env=_env(), timeout=PROCESS_TIMEOUT_SECONDS)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {service.url} serves ρ=1 clip(s) per video, and the objectives need ρ >= 2 positives: "
                      "restart the service with --num-clips 2 or more (clipserve start ... --num-clips 2)"]
