"""Learning benchmark (not a test): does self-supervised pretraining through clipserve learn, and do
the paper's two findings (more clips ρ help; a larger timespan t_max helps) show on a CPU?

Data: the learnable world (``clipserve make-sample --preset learnable``: 10 object categories, 400
train / 200 val videos of 48×48 pixels, 8 s at 15 fps; built into ``--data`` if missing, ~40 s on
2 cores). The label is an object category that persists through each video while the object's pose,
scale, shape and colour and the scene's pan and lighting drift along its timeline.

Every pretraining run is the real pipeline: its own ``clipserve start`` service (with the run's
``--num-clips`` and ``--max-span-seconds``) feeding ``python -m trainer`` over shared memory
(ClipStream). The supervised control reads the same kind of stream in this process (the same tiny
backbone, ρ=2 global, the same number of steps, a linear head on the labels).

The CPU recipe (each part a flag; the prototype sweep behind it is in docs/benchmarks.md): the
services serve aug+ made milder for 48² frames (``--crop-area 0.6 1.0``: a fifth of the frame
often misses the object; ``--color-jitter-strength 0.4 0.4 0.4 0.1``; ``--blur-probability 0``:
σ up to 2 px erases the markings), and the trainers run the ``cpu`` profile with SGD at
``CPU_SSL_LR`` (0.01; ρBYOL 0.05) and temperature 0.2. With aug+ and ``--base-lr 0.3`` every
objective stayed within 7 points of random init and the supervised control at 57 %.
Evaluation reads the train split (the kNN memory bank and the probe's training set) and the val split
(the queries) once from ``--eval-mode`` services (centre crops, no augmentation, ``--eval-clips``
clips per video, features averaged over them) and scores every encoder on the same clips: kNN top-1
(k=20, cosine, temperature-weighted votes) and a linear probe (``trainer.eval``).

Configurations (each over several seeds, reported as mean ± std over seeds):

    moco, byol, simclr, swav   ρ=2, global sampling
    moco-rho4, byol-rho4       ρ=4 at the same number of steps (equal epochs; twice the clips)
    moco-rho2-2x, byol-rho2-2x ρ=2 for twice the steps (ρ=4's compute)
    moco-tmax0                 ρ=2, t_max = 0 (both clips start at the same time)
    moco-tmax1.5               ρ=2, t_max = 1.5 s
    (moco itself is the "global" point of the timespan series)

Commands::

    python benchmarks/learning.py                 # the whole table (800 steps a run; 24.0 min on an idle 2-core VM)
    python benchmarks/learning.py --quick         # 400 steps, no extra timespan seeds (about half the compute)
    python benchmarks/learning.py --only moco,moco-tmax0 --seeds 2
    python benchmarks/learning.py --only byol --backbone r2plus1d_18 --trainer-flag=--optimizer --trainer-flag=lars
    python benchmarks/learning.py --extra-run byol-tmax1.5:byol:2:1.5 --only byol,byol-tmax1.5 --no-supervised-control
    python benchmarks/learning.py --only byol --service-flag=--grayscale-probability --service-flag=1.0
    python benchmarks/learning.py --gpu           # GPU scale (not run here): r3d_18, 112², more steps

``--gpu`` is the same benchmark at GPU scale (documented, not run on the CPU machines): backbone
r3d_18, 112×112 crops, T=16 frames, batch 32, 2000 steps, the trainer's ``paper`` hyperparameters
instead of ``cpu``, ``--device cuda``, 8 decode workers per service and one run at a time. The
learnable world is 48×48, so give it a larger K400-layout ``--data`` (e.g. a real Kinetics subset);
the GPU run never builds a dataset.

Runs are bounded by ``--steps``. ``--minutes-per-run`` (30 min on the CPU) is only a safety net far
above a run's expected time (about 2 min alone): a run it cuts is listed under ``failed_runs`` and
left out of the means, never averaged in as if complete.

Output: one JSON document on stdout and in ``<out>/results.json`` (per configuration ``name``,
``objective``, ``num_clips``, ``max_span_seconds`` (null = global), ``seeds``, ``knn_top1_mean``,
``knn_top1_std``, ``linear_top1_mean``, ``linear_top1_std``, per-seed details; ``random_init`` and
``supervised`` in the same shape; the targets of issue 11 checked), ``<out>/learning.png`` (bars with
error bars, grouped like the paper's tables), then a one-line summary. Every process it starts is
stopped on exit, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from trainer.config import BACKBONES, OBJECTIVES  # noqa: E402 (after the path insert)
from trainer.eval_services import READY_PATTERN, stop_process_group  # noqa: E402

CPU_SSL_LR = {"moco": 0.01, "byol": 0.05, "simclr": 0.01, "swav": 0.01}
"""SGD ``--base-lr`` per objective on the CPU (tiny backbone, 16 videos a batch, 800 steps): the
contrastive objectives learn nothing at 0.3 (their loss stays at chance) and most at 0.005-0.01;
ρBYOL is flat between 0.02 and 0.3 (prototype sweep, docs/benchmarks.md)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One pretraining configuration: objective, the service's sampling flags, a compute factor."""

    name: str
    objective: str
    num_clips: int = 2
    """ρ, clips per video."""
    max_span_seconds: float | None = None
    """t_max in seconds; None = global sampling."""
    steps_factor: int = 1
    """Multiplies ``--steps`` (2 = ρ=4's compute for a ρ=2 run)."""
    extra_seeds: int = 0
    """Seeds beyond ``--seeds`` (the timespan series needs ≥ 3)."""
    group: str = ""
    """Plot group (the paper's table it belongs to)."""


RUNS = [
    RunSpec("moco", "moco", extra_seeds=1, group="objectives (ρ=2, global)"),
    RunSpec("byol", "byol", group="objectives (ρ=2, global)"),
    RunSpec("simclr", "simclr", group="objectives (ρ=2, global)"),
    RunSpec("swav", "swav", group="objectives (ρ=2, global)"),
    RunSpec("moco-rho4", "moco", num_clips=4, group="ρ (equal epochs)"),
    RunSpec("moco-rho2-2x", "moco", steps_factor=2, group="ρ (equal epochs)"),
    RunSpec("byol-rho4", "byol", num_clips=4, group="ρ (equal epochs)"),
    RunSpec("byol-rho2-2x", "byol", steps_factor=2, group="ρ (equal epochs)"),
    RunSpec("moco-tmax0", "moco", max_span_seconds=0.0, extra_seeds=1, group="timespan t_max (ρMoCo, ρ=2)"),
    RunSpec("moco-tmax1.5", "moco", max_span_seconds=1.5, extra_seeds=1, group="timespan t_max (ρMoCo, ρ=2)"),
]


def parse_run_spec(text: str) -> RunSpec:
    """``NAME:OBJECTIVE:RHO[:T_MAX_SECONDS]`` → a :class:`RunSpec` (``--extra-run``); argparse turns
    an ArgumentTypeError into a usage error (exit status 2) with its message."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected NAME:OBJECTIVE:RHO[:T_MAX_SECONDS], got {text!r}")
    name, objective, rho = parts[:3]
    if objective not in OBJECTIVES:
        raise argparse.ArgumentTypeError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    try:
        num_clips = int(rho)
        max_span_seconds = float(parts[3]) if len(parts) == 4 else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"RHO must be an integer and T_MAX_SECONDS a number, got {text!r}") from None
    if num_clips < 2:
        raise argparse.ArgumentTypeError(f"RHO must be >= 2 (clips per video), got {num_clips}")
    if max_span_seconds is not None and not max_span_seconds >= 0:
        raise argparse.ArgumentTypeError(f"T_MAX_SECONDS must be >= 0, got {max_span_seconds}")
    return RunSpec(name, objective, num_clips=num_clips, max_span_seconds=max_span_seconds, group="extra")


# ------------------------------------------------------------------ processes

_LIVE: list[subprocess.Popen[bytes]] = []
_LIVE_LOCK = threading.Lock()


def _env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSERVE_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _popen(command: Sequence[str], log_path: Path, threads: int = 1) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=_env(threads),
                               start_new_session=True)
    log.close()
    with _LIVE_LOCK:
        _LIVE.append(process)
    return process


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_seconds: float = 30.0) -> None:
    """``stop_process_group`` (``sig``, wait, SIGKILL the process group), and forget the process."""
    stop_process_group(process, sig, timeout_seconds)
    with _LIVE_LOCK:
        if process in _LIVE:
            _LIVE.remove(process)


def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for process in live:
        _stop(process, timeout_seconds=10.0)


@contextmanager
def service(args: argparse.Namespace, log_path: Path, flags: Sequence[str], timeout_seconds: float = 300.0) -> Iterator[str]:
    """``clipserve start`` on 127.0.0.1 (any free port) with ``flags``; yields its URL, stops it on exit."""
    command = [sys.executable, "-m", "clipserve", "start", "--dataset", "k400", "--root", str(args.data), "--host",
               "127.0.0.1", "--port", "0", "--no-progress", "--log-level", "warning", *flags]
    log_path.write_bytes(b"")
    process = _popen(command, log_path)
    try:
        deadline = time.monotonic() + timeout_seconds
        url = None
        while time.monotonic() < deadline and url is None:
            match = READY_PATTERN.search(log_path.read_text(errors="replace"))
            if match:
                url = match.group(2).rstrip("/")
            elif process.poll() is not None:
                break
            else:
                time.sleep(0.1)
        if url is None:
            raise RuntimeError(f"clipserve start did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield url
    finally:
        _stop(process)


def log(message: str) -> None:
    print(f"[learning {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ data

def ensure_dataset(args: argparse.Namespace) -> None:
    """Build the learnable world into ``args.data`` unless it is complete (``--gpu``: use it as is)."""
    if args.gpu:
        if not (args.data / "annotations").is_dir():
            raise SystemExit(f"--gpu: {args.data} is not a K400-layout dataset (no annotations/)")
        return
    from clipserve.sample import build_sample
    from clipserve.sample.spec import make_learnable_spec

    result = build_sample(args.data, make_learnable_spec(), progress=False)
    if not result.already_complete:
        log(f"built the learnable world: {result.num_videos} videos in {result.elapsed_seconds:.0f} s -> {args.data}")


def sampling_flags(args: argparse.Namespace, *, num_clips: int, max_span_seconds: float | None, seed: int,
                   workers: int | None = None) -> list[str]:
    flags = ["--num-clips", str(num_clips), "--frames-per-clip", str(args.frames), "--frame-stride", str(args.stride),
             "--target-fps", str(args.target_fps), "--crop-size", str(args.crop), "--batch-size", str(args.batch_size),
             "--workers", str(workers or args.workers), "--seed", str(seed), "--index-cache", str(args.index_cache)]
    if max_span_seconds is not None:
        flags += ["--max-span-seconds", str(max_span_seconds)]
    if not args.gpu:  # the CPU recipe's augmentation (ignored by --eval-mode services); --gpu keeps aug+
        flags += ["--crop-area", *map(str, args.crop_area), "--color-jitter-strength", *map(str, args.color_jitter_strength),
                  "--blur-probability", str(args.blur_probability)]
    return flags


def training_service_flags(args: argparse.Namespace, *, num_clips: int, max_span_seconds: float | None,
                           seed: int) -> list[str]:
    """A training service's flags: :func:`sampling_flags` plus ``--service-flag``s (which the
    ``--eval-mode`` services never get: evaluation always sees the same centre clips)."""
    return sampling_flags(args, num_clips=num_clips, max_span_seconds=max_span_seconds, seed=seed) + args.service_flags


def read_eval_split(args: argparse.Namespace, split: str) -> list[Any]:
    """One epoch of ``split`` from an ``--eval-mode`` service, clips copied out of shared memory."""
    from clipserve.client import ClipStream
    from trainer.data import SyntheticBatch

    flags = sampling_flags(args, num_clips=args.eval_clips, max_span_seconds=None, seed=0, workers=2)
    flags += ["--eval-mode", "--split", split]
    batches: list[Any] = []
    with service(args, args.out / f"eval-{split}-service.log", flags) as url:
        stream = ClipStream(url, transport="shm")
        try:
            for batch in stream:
                if batch.epoch != 0:
                    break
                batches.append(SyntheticBatch(batch.clips.clone(), batch.video_index.clone(), batch.label.clone(),
                                              batch.clip_start_seconds.clone(), batch.is_padding.clone(),
                                              batch.epoch, batch.step))
        finally:
            stream.close()
    return batches


# ------------------------------------------------------------------ train

def pretrain(args: argparse.Namespace, run: RunSpec, seed: int) -> dict[str, Any]:
    """Pretrain ``run`` with ``seed`` (service and trainer) against its own service."""
    name = f"{run.name}-seed{seed}"
    ckpt_dir = args.out / name
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    steps = args.steps * run.steps_factor
    flags = training_service_flags(args, num_clips=run.num_clips, max_span_seconds=run.max_span_seconds, seed=seed)
    started = time.monotonic()
    with service(args, args.out / f"{name}-service.log", flags) as url:
        command = [sys.executable, "-m", "trainer", "--objective", run.objective, "--server", url,
                   "--profile", args.profile, "--backbone", args.backbone, "--max-steps", str(steps),
                   "--checkpoint-dir", str(ckpt_dir), "--progress", "false", "--log-every-steps", "10",
                   "--checkpoint-every-steps", "100000", "--device", args.device, "--seed", str(seed),
                   "--max-seconds", str(args.minutes_per_run * 60.0 * run.steps_factor),
                   *trainer_flags(args, run.objective)]
        log_path = args.out / f"{name}-trainer.log"
        trainer = _popen(command, log_path, threads=args.trainer_threads)
        try:  # --max-seconds stops the trainer at a step boundary; a Ctrl-C is the fallback
            trainer.wait(args.minutes_per_run * 60.0 * run.steps_factor + 120.0)
        except subprocess.TimeoutExpired:
            _stop(trainer, signal.SIGINT, timeout_seconds=60.0)
        finally:
            _stop(trainer)
    wall_seconds = time.monotonic() - started
    metrics_path = ckpt_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.exists() else []
    if not (ckpt_dir / "last.pt").exists():
        raise RuntimeError(f"{name}: no checkpoint; trainer log:\n{log_path.read_text(errors='replace')[-3000:]}")
    from trainer.checkpoint import load_checkpoint

    steps_done = int(load_checkpoint(ckpt_dir)["step"])
    return {"seed": seed, "steps": steps_done, "cut_by_time_budget": steps_done < steps,
            "wall_seconds": round(wall_seconds, 1),
            "first_loss": metrics[0]["loss"] if metrics else None, "last_loss": metrics[-1]["loss"] if metrics else None,
            "mean_clips_per_second": round(sum(m["clips_per_second"] for m in metrics) / len(metrics), 1) if metrics else None,
            "mean_data_wait_fraction": round(sum(m["data_wait_fraction"] for m in metrics) / len(metrics), 3) if metrics else None}


def previous_run(args: argparse.Namespace, run: RunSpec, seed: int) -> dict[str, Any]:
    """``--evaluate-only``: what :func:`pretrain` returned, read back from the run's checkpoint
    directory (its metrics.jsonl; wall time as the span of its metric records)."""
    ckpt_dir = args.out / f"{run.name}-seed{seed}"
    if not (ckpt_dir / "last.pt").exists():
        raise RuntimeError(f"--evaluate-only: no checkpoint in {ckpt_dir}; run the benchmark without it first")
    from trainer.checkpoint import load_checkpoint

    metrics = [json.loads(line) for line in (ckpt_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps_done = int(load_checkpoint(ckpt_dir)["step"])
    return {"seed": seed, "steps": steps_done, "cut_by_time_budget": steps_done < args.steps * run.steps_factor,
            "wall_seconds": None, "first_loss": metrics[0]["loss"] if metrics else None,
            "last_loss": metrics[-1]["loss"] if metrics else None,
            "mean_clips_per_second": round(sum(m["clips_per_second"] for m in metrics) / len(metrics), 1) if metrics else None,
            "mean_data_wait_fraction": round(sum(m["data_wait_fraction"] for m in metrics) / len(metrics), 3) if metrics else None}


def trainer_flags(args: argparse.Namespace, objective: str) -> list[str]:
    """The benchmark's trainer settings on top of ``--profile`` (CPU: per-objective learning rates,
    temperature ``--temperature``, a MoCo queue smaller than the train split so its negatives are
    not mostly the positives' own earlier clips, 30 SwAV prototypes for 10 categories)."""
    if args.gpu:
        return list(args.trainer_flags)
    flags = ["--base-lr", str(args.ssl_lr if args.ssl_lr is not None else CPU_SSL_LR[objective])]
    if objective != "byol":
        flags += ["--temperature", str(args.temperature)]
    if objective == "moco":
        flags += ["--moco-queue-size", str(args.moco_queue)]
    if objective == "swav":
        flags += ["--swav-num-prototypes", "30"]
    return flags + list(args.trainer_flags)


def supervised_control(args: argparse.Namespace, seed: int, num_classes: int) -> tuple[Any, dict[str, Any]]:
    """The same backbone trained *with labels* (linear head, cross-entropy, Adam with a cosine
    learning rate: SGD needs far more steps on this small CNN) on the same aug+ stream (ρ=2, global sampling) for ``--steps`` steps,
    in this process: proof that the world is learnable in the budget."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from clipserve.client import ClipStream
    from trainer.backbones import build_backbone
    from trainer.utils import normalize_clips

    torch.manual_seed(seed)
    backbone, feature_dim = build_backbone(args.backbone)
    head = nn.Linear(feature_dim, num_classes)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.supervised_lr)
    losses: list[float] = []
    started = time.monotonic()
    flags = training_service_flags(args, num_clips=2, max_span_seconds=None, seed=seed)
    with service(args, args.out / f"supervised-seed{seed}-service.log", flags) as url:
        stream = ClipStream(url, transport="shm")
        try:
            backbone.train()
            for step, batch in enumerate(stream):
                if step >= args.steps or time.monotonic() - started > args.minutes_per_run * 60.0:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = args.supervised_lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
                x = normalize_clips(batch.clips, args.device).flatten(0, 1)  # (B·ρ, C, T, H, W)
                y = batch.label.to(args.device).repeat_interleave(batch.clips.shape[1])
                loss = F.cross_entropy(head(backbone(x)), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        finally:
            stream.close()

    class _Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def features(self, clips: torch.Tensor) -> torch.Tensor:
            return self.backbone(clips)

    tail = losses[-10:] or [float("nan")]
    return _Features(), {"seed": seed, "steps": len(losses), "cut_by_time_budget": len(losses) < args.steps,
                         "wall_seconds": round(time.monotonic() - started, 1),
                         "first_loss": losses[0] if losses else None, "last_loss": sum(tail) / len(tail)}


# ------------------------------------------------------------------ evaluate

def evaluate(model: Any, bank: list[Any], queries: list[Any], args: argparse.Namespace) -> dict[str, float]:
    """kNN top-1 (k, cosine, temperature 0.07) and linear-probe top-1 of ``model.features``."""
    import torch

    from trainer.eval import extract_features, knn_accuracy, linear_probe_accuracy

    model.to(args.device).eval()
    with torch.no_grad():
        f_tr, y_tr, _ = extract_features(model.features, bank, args.device)
        f_te, y_te, _ = extract_features(model.features, queries, args.device)
    return {"knn_top1": knn_accuracy(f_tr, y_tr, f_te, y_te, k=args.k),
            "linear_top1": linear_probe_accuracy(f_tr, y_tr, f_te, y_te)}


def load_model(ckpt_dir: Path) -> Any:
    from trainer.checkpoint import load_checkpoint
    from trainer.config import config_from_dict
    from trainer.objectives import build_objective

    ckpt = load_checkpoint(ckpt_dir)
    model = build_objective(config_from_dict(ckpt["config"]), num_clips=int(ckpt["num_clips"]))
    model.load_state_dict(ckpt["model"])
    return model


def random_model(args: argparse.Namespace, seed: int) -> Any:
    import torch

    from trainer.config import make_config
    from trainer.objectives import build_objective

    torch.manual_seed(seed)  # as the trainer does before building (seed = --seed)
    return build_objective(make_config("moco", "cpu", server="synthetic", backbone=args.backbone), num_clips=2)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def summarise(name: str, objective: str | None, num_clips: int | None, max_span_seconds: float | None,
              per_seed: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One configuration's entry: the fields of issue 11 (top-1 as percentages) plus per-seed details."""
    knn_mean, knn_std = _mean_std([100 * r["knn_top1"] for r in per_seed])
    lin_mean, lin_std = _mean_std([100 * r["linear_top1"] for r in per_seed])
    return {"name": name, "objective": objective, "num_clips": num_clips, "max_span_seconds": max_span_seconds,
            "seeds": [r["seed"] for r in per_seed], "knn_top1_mean": round(knn_mean, 2), "knn_top1_std": round(knn_std, 2),
            "linear_top1_mean": round(lin_mean, 2), "linear_top1_std": round(lin_std, 2), **extra, "per_seed": per_seed}


def check_targets(entries: dict[str, dict[str, Any]], random_init: dict[str, Any],
                  supervised: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 11's targets (kNN top-1 points), None where a configuration was not run."""
    def knn(name: str) -> float | None:
        return entries[name]["knn_top1_mean"] if name in entries else None

    def diff(a: str, b: str) -> float | None:
        return None if knn(a) is None or knn(b) is None else round(knn(a) - knn(b), 2)  # type: ignore[operator]

    base = random_init["knn_top1_mean"]
    margins = {o: round(knn(o) - base, 2) for o in OBJECTIVES if knn(o) is not None}  # type: ignore[operator]
    tmax0, short, global_ = knn("moco-tmax0"), knn("moco-tmax1.5"), knn("moco")
    return {
        "supervised_ge_75": None if supervised is None else supervised["knn_top1_mean"] >= 75
        or supervised["linear_top1_mean"] >= 75,
        "objective_minus_random_knn_points": margins,
        "every_objective_ge_random_plus_15": all(m >= 15 for m in margins.values()) if margins else None,
        "moco_rho4_minus_rho2_points": diff("moco-rho4", "moco"),
        "byol_rho4_minus_rho2_points": diff("byol-rho4", "byol"),
        "rho4_ge_rho2_plus_5": None if diff("moco-rho4", "moco") is None or diff("byol-rho4", "byol") is None
        else diff("moco-rho4", "moco") >= 5 and diff("byol-rho4", "byol") >= 5,  # type: ignore[operator]
        "moco_rho4_minus_rho2_2x_points": diff("moco-rho4", "moco-rho2-2x"),
        "byol_rho4_minus_rho2_2x_points": diff("byol-rho4", "byol-rho2-2x"),
        "tmax0_lt_short_le_global": None if None in (tmax0, short, global_)
        else tmax0 < short <= global_,  # type: ignore[operator]
        "timespan_knn_top1": {"0": tmax0, "1.5": short, "global": global_},
    }


# ------------------------------------------------------------------ plot (Pillow)

def draw_plot(document: dict[str, Any], path: Path) -> None:
    """Bars (kNN top-1 mean) with error bars (± std over seeds) grouped like the paper's tables
    (objectives; ρ for MoCo and BYOL with ρ=2 at ρ=4's compute; t_max), random init and supervised
    as dashed reference lines. Pillow only (ASCII labels: its default font has no Greek)."""
    from PIL import Image, ImageDraw

    configs = document["configurations"]
    layout = [
        ("objectives (rho=2, global)", [("moco", "MoCo"), ("byol", "BYOL"), ("simclr", "SimCLR"), ("swav", "SwAV")]),
        ("MoCo: rho, equal epochs", [("moco", "rho=2"), ("moco-rho4", "rho=4"), ("moco-rho2-2x", "rho=2, 2x steps")]),
        ("BYOL: rho, equal epochs", [("byol", "rho=2"), ("byol-rho4", "rho=4"), ("byol-rho2-2x", "rho=2, 2x steps")]),
        ("MoCo rho=2: t_max", [("moco-tmax0", "t_max=0"), ("moco-tmax1.5", "t_max=1.5 s"), ("moco", "global")]),
    ]
    groups = [(title, [(configs[n], label) for n, label in bars if n in configs]) for title, bars in layout]
    groups = [(title, bars) for title, bars in groups if bars]
    bar_w, gap, left, top, height, label_h = 30, 30, 50, 40, 300, 100
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    spans = [max(len(bars) * bar_w, int(probe.textlength(title)) + 4) for title, bars in groups]
    width = max(left + sum(spans) + (len(groups) + 1) * gap + 120, 480)
    image = Image.new("RGB", (width, top + height + label_h + 40), "white")
    draw = ImageDraw.Draw(image)

    def y_of(value: float) -> float:
        return top + height * (1 - value / 100.0)

    for tick in range(0, 101, 20):
        draw.line([(left - 4, y_of(tick)), (width - 10, y_of(tick))], fill=(225, 225, 225))
        draw.text((left - 28, y_of(tick) - 6), f"{tick}", fill="black")
    draw.text((8, 8), "kNN top-1 (%) on the learnable world's 200 val videos; bars: mean, whiskers: +-1 std over seeds",
              fill="black")
    for entry, colour, label in ((document["random_init"], (200, 60, 60), "random init"),
                                 (document.get("supervised"), (60, 140, 60), "supervised")):
        if entry:
            y = y_of(entry["knn_top1_mean"])
            for x in range(left, width - 10, 8):
                draw.line([(x, y), (x + 4, y)], fill=colour, width=2)
            draw.text((width - 110, y - 13), f"{label} {entry['knn_top1_mean']:.1f}", fill=colour)
    x = left + gap
    palette = [(70, 110, 180), (230, 150, 40), (120, 80, 160), (40, 150, 150)]
    for g, (title, bars) in enumerate(groups):
        start = x
        x += (spans[g] - len(bars) * bar_w) // 2
        for entry, label in bars:
            mean, std = entry["knn_top1_mean"], entry["knn_top1_std"]
            draw.rectangle([x, y_of(mean), x + bar_w - 6, y_of(0)], fill=palette[g % len(palette)])
            cx = x + (bar_w - 6) / 2
            draw.line([(cx, y_of(mean - std)), (cx, y_of(mean + std))], fill="black", width=1)
            for yy in (y_of(mean - std), y_of(mean + std)):
                draw.line([(cx - 4, yy), (cx + 4, yy)], fill="black")
            text = Image.new("RGB", (label_h - 8, 12), "white")
            ImageDraw.Draw(text).text((0, 0), label, fill="black")
            image.paste(text.rotate(90, expand=True), (int(x + 6), int(y_of(0) + 6)))
            x += bar_w
        draw.text((start, top + height + label_h + 10), title, fill=palette[g % len(palette)])
        x = start + spans[g] + gap
    image.save(path)


# ------------------------------------------------------------------ main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "learnable-k400",
                        help="dataset root (the learnable world is built there if missing)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-out" / "learning",
                        help="checkpoints, logs, results.json and learning.png")
    parser.add_argument("--quick", action="store_true", help="fewer steps, 2 seeds for the timespan runs too")
    parser.add_argument("--gpu", action="store_true",
                        help="GPU scale: r3d_18, 112² crops, T=16, batch 32, 2000 steps, paper profile, cuda")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 800; --quick 400)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 2; timespan +1)")
    parser.add_argument("--minutes-per-run", type=float, default=None,
                        help="safety net per run, minutes (default 30, --gpu 120): far above a run's expected time; "
                             "runs are bounded by --steps, and a run this cap cuts is reported as failed, not averaged")
    parser.add_argument("--parallel", type=int, default=2, help="runs in flight at once (default 2: one per core)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(r.name for r in RUNS)}")
    parser.add_argument("--crop", type=int, default=None, help="crop size, pixels (H = W; default 32, --gpu 112)")
    parser.add_argument("--frames", type=int, default=None, help="T, frames per clip (default 4, --gpu 16)")
    parser.add_argument("--stride", type=int, default=4, help="τ, frame stride (frames at --target-fps)")
    parser.add_argument("--target-fps", type=float, default=15.0, help="frame rate the stride counts in")
    parser.add_argument("--batch-size", type=int, default=None, help="B, videos per batch (default 16, --gpu 32)")
    parser.add_argument("--workers", type=int, default=None, help="decode workers per service (default 1, --gpu 8)")
    parser.add_argument("--eval-clips", type=int, default=4, help="clips per video in the evaluation views")
    parser.add_argument("--trainer-threads", type=int, default=1, help="torch threads per trainer")
    parser.add_argument("--moco-queue", type=int, default=256, help="ρMoCo queue size on the CPU (videos' keys)")
    parser.add_argument("--supervised-lr", type=float, default=0.002, help="supervised control's peak Adam learning rate")
    parser.add_argument("--ssl-lr", type=float, default=None,
                        help="--base-lr of every self-supervised run on the CPU (SGD; default per objective: "
                             + ", ".join(f"{o} {lr}" for o, lr in CPU_SSL_LR.items()) + ")")
    parser.add_argument("--temperature", type=float, default=0.2,
                        help="α of ρMoCo, ρSimCLR and ρSwAV on the CPU (the paper's 0.1 learns less with 16 videos a batch)")
    parser.add_argument("--crop-area", type=float, nargs=2, default=(0.6, 1.0), metavar=("LOW", "HIGH"),
                        help="random-resized-crop area fraction on the CPU (aug+: 0.2 0.766; a 48² frame cropped to "
                             "a fifth keeps too little of the object)")
    parser.add_argument("--color-jitter-strength", type=float, nargs=4, default=(0.4, 0.4, 0.4, 0.1),
                        metavar=("B", "C", "S", "H"), help="colour jitter strength on the CPU (aug+: 0.6 0.6 0.6 0.15)")
    parser.add_argument("--blur-probability", type=float, default=0.0,
                        help="Gaussian blur probability on the CPU (aug+: 0.5; σ up to 2 px erases a 48² object's markings)")
    parser.add_argument("--backbone", default=None, choices=BACKBONES,
                        help="backbone of every run and of the supervised control (default tiny, --gpu r3d_18)")
    parser.add_argument("--k", type=int, default=20, help="kNN neighbours")
    parser.add_argument("--no-supervised-control", action="store_true", help="skip the supervised reference")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="no pretraining: evaluate the checkpoints a previous run left in --out (the "
                             "supervised control, kept in memory only, is trained again)")
    parser.add_argument("--service-flag", dest="service_flags", action="append", default=[],
                        help="extra `clipserve start` flag for the training services (not the evaluation ones), "
                             "repeatable, e.g. --service-flag=--grayscale-probability --service-flag=1.0")
    parser.add_argument("--extra-run", dest="extra_runs", action="append", default=[], type=parse_run_spec,
                        metavar="NAME:OBJECTIVE:RHO[:T_MAX_SECONDS]",
                        help="one more configuration (repeatable; t_max omitted = global sampling), e.g. "
                             "byol-tmax1.5:byol:2:1.5; it runs with the others, or alone with --only NAME")
    parser.add_argument("--trainer-flag", dest="trainer_flags", action="append", default=[],
                        help="extra trainer flag, repeatable, e.g. --trainer-flag=--base-lr --trainer-flag=0.1")
    args = parser.parse_args(argv)
    all_runs = [*RUNS, *args.extra_runs]
    names = [r.name for r in all_runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # each name is a checkpoint folder and a key of the results
        parser.error(f"--extra-run: configuration name(s) {', '.join(repeated)} used twice (the table's: "
                     f"{', '.join(r.name for r in RUNS)})")
    args.runs = all_runs
    if args.only is not None:
        wanted = args.only.split(",")
        unknown = [name for name in wanted if name not in names]
        if unknown:
            parser.error(f"--only: unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        args.runs = [r for r in all_runs if r.name in wanted]
    gpu = args.gpu
    args.steps = args.steps or (2000 if gpu else 400 if args.quick else 800)
    args.seeds = args.seeds or 2
    args.minutes_per_run = args.minutes_per_run or (120.0 if gpu else 30.0)
    args.crop = args.crop or (112 if gpu else 32)
    args.frames = args.frames or (16 if gpu else 4)
    args.batch_size = args.batch_size or (32 if gpu else 16)
    args.workers = args.workers or (8 if gpu else 1)
    args.backbone = args.backbone or ("r3d_18" if gpu else "tiny")
    args.profile = "paper" if gpu else "cpu"
    args.device = "cuda" if gpu else "cpu"
    if gpu:
        args.parallel = 1
    args.data = args.data.resolve()
    args.out = args.out.resolve()
    args.index_cache = args.out / "index-cache.json"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runs = args.runs
    args.out.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        import torch

        torch.set_num_threads(args.trainer_threads)
        ensure_dataset(args)
        log("reading the eval-mode train/val splits ...")
        bank = read_eval_split(args, "train")
        queries = read_eval_split(args, "val")
        num_classes = int(max(int(b.label.max()) for b in bank)) + 1
        log(f"{sum(int((~b.is_padding).sum()) for b in bank)} bank videos, "
            f"{sum(int((~b.is_padding).sum()) for b in queries)} queries, {num_classes} classes")

        random_per_seed = [{"seed": s, **evaluate(random_model(args, s), bank, queries, args)} for s in range(args.seeds + 1)]
        random_init = summarise("random_init", None, None, None, random_per_seed)
        log(f"random init: kNN {random_init['knn_top1_mean']:.1f} ± {random_init['knn_top1_std']:.1f}")

        jobs = [(run, seed) for run in runs for seed in range(args.seeds + (run.extra_seeds if not args.quick else 0))]
        jobs.sort(key=lambda job: -job[0].steps_factor * job[0].num_clips)  # the long ones first
        train_info: dict[tuple[str, int], dict[str, Any]] = {}
        supervised_models: list[tuple[Any, dict[str, Any]]] = []

        def do(job: tuple[RunSpec, int] | tuple[None, int]) -> None:
            run, seed = job
            if run is None:
                supervised_models.append(supervised_control(args, seed, num_classes))
                log(f"supervised seed {seed}: {supervised_models[-1][1]['steps']} steps")
                return
            info = previous_run(args, run, seed) if args.evaluate_only else pretrain(args, run, seed)
            train_info[(run.name, seed)] = info
            log(f"{run.name} seed {seed}: {info['steps']} steps in {info['wall_seconds']} s "
                f"({info['mean_clips_per_second']} clips/s, data wait {info['mean_data_wait_fraction']})")

        all_jobs: list[Any] = list(jobs)
        if not args.no_supervised_control:
            all_jobs += [(None, s) for s in range(args.seeds)]
        log(f"{len(all_jobs)} training runs, {args.parallel} at a time ...")
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for future in [pool.submit(do, job) for job in all_jobs]:
                future.result()

        configurations: dict[str, dict[str, Any]] = {}
        for run in runs:
            per_seed, failed = [], []
            for (name, seed), info in sorted(train_info.items()):
                if name == run.name and info["cut_by_time_budget"]:  # the safety net cut it: failed, not averaged
                    failed.append(info)
                    log(f"{name} seed {seed}: FAILED, cut by --minutes-per-run at {info['steps']} steps")
                elif name == run.name:
                    scores = evaluate(load_model(args.out / f"{name}-seed{seed}"), bank, queries, args)
                    per_seed.append({**info, **scores})
            if not per_seed:
                raise RuntimeError(f"{run.name}: every seed failed (cut by --minutes-per-run); raise it")
            configurations[run.name] = summarise(run.name, run.objective, run.num_clips, run.max_span_seconds, per_seed,
                                                 steps=args.steps * run.steps_factor, group=run.group,
                                                 failed_runs=failed)
            log(f"{run.name}: kNN {configurations[run.name]['knn_top1_mean']:.1f} ± "
                f"{configurations[run.name]['knn_top1_std']:.1f}")
        supervised = None
        if supervised_models:
            done = sorted((m for m in supervised_models if not m[1]["cut_by_time_budget"]), key=lambda m: m[1]["seed"])
            cut = [info for _, info in supervised_models if info["cut_by_time_budget"]]  # failed, not averaged
            per_seed = [{**info, **evaluate(model, bank, queries, args)} for model, info in done]
            supervised = summarise("supervised", "cross-entropy on labels", 2, None, per_seed, steps=args.steps,
                                   failed_runs=cut) if per_seed else None
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        _stop_all()
        signal.signal(signal.SIGTERM, previous)

    document = {
        "benchmark": "learning", "command": " ".join(["python", "benchmarks/learning.py", *(argv or sys.argv[1:])]),
        "training_path": "every pretraining run: its own `clipserve start` service + `python -m trainer` over "
                         "shared memory (ClipStream); supervised control: ClipStream from a service in this process",
        "settings": {"data": str(args.data), "steps": args.steps, "seeds": args.seeds, "parallel": args.parallel,
                     "crop_size_pixels": args.crop, "frames_per_clip": args.frames, "frame_stride": args.stride,
                     "target_fps": args.target_fps, "batch_size": args.batch_size, "workers": args.workers,
                     "eval_clips": args.eval_clips, "k": args.k, "backbone": args.backbone, "profile": args.profile,
                     "device": args.device, "moco_queue": args.moco_queue, "trainer_flags": args.trainer_flags,
                     "service_flags": args.service_flags,
                     "ssl_lr": args.ssl_lr if args.ssl_lr is not None else (None if args.gpu else CPU_SSL_LR),
                     "temperature": None if args.gpu else args.temperature,
                     "augment": None if args.gpu else {"crop_area_fraction": args.crop_area,
                                                       "color_jitter_strength": args.color_jitter_strength,
                                                       "blur_probability": args.blur_probability}},
        "num_bank_videos": sum(int((~b.is_padding).sum()) for b in bank),
        "num_query_videos": sum(int((~b.is_padding).sum()) for b in queries),
        "random_init": random_init, "supervised": supervised, "configurations": configurations,
        "targets": check_targets(configurations, random_init, supervised),
        "total_wall_seconds": round(time.monotonic() - started, 1),
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2))
    draw_plot(document, args.out / "learning.png")
    print(json.dumps(document, indent=2))
    summary = ", ".join(f"{name} {c['knn_top1_mean']:.1f}±{c['knn_top1_std']:.1f}" for name, c in configurations.items())
    sup = f"supervised {supervised['knn_top1_mean']:.1f}±{supervised['knn_top1_std']:.1f}; " if supervised else ""
    print(f"learning: kNN top-1 % ({document['num_query_videos']} val queries, {args.steps} steps) "
          f"random {random_init['knn_top1_mean']:.1f}±{random_init['knn_top1_std']:.1f}; {sup}{summary}; "
          f"in {document['total_wall_seconds'] / 60:.1f} min -> {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
