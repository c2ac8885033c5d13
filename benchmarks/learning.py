"""Learning benchmark (not a test): does self-supervised pretraining on the clipserve stream learn?

On the sample dataset (``clipserve make-sample``: 8 classes = 8 motion patterns, 80 train / 16 val
videos, built into ``--data`` if missing) this pretrains each objective with the tiny backbone for a
fixed budget (``--steps`` optimizer steps, cut at ``--minutes-per-run`` wall-clock minutes by the
trainer's ``--max-seconds``), each against its own ``clipserve start`` service with that
run's sampling flags. Then it evaluates every checkpoint and a random-init encoder with kNN (k=20,
cosine, temperature-weighted votes; ``trainer.eval.knn_accuracy``) and a linear probe: the train split
is the memory bank, the val split the queries, both read once from services started with
``--eval-mode`` (centre crops, no augmentation) and kept in memory, so every model sees the same clips.

Configurations: ``moco``, ``byol``, ``simclr``, ``swav`` (ρ=2, global sampling), ``moco-rho4`` (ρ=4)
and ``moco-tmax0`` (``--max-span-seconds 0``: all ρ clips start at the same time).

    python benchmarks/learning.py                       # full: see --help for the budget
    python benchmarks/learning.py --quick               # reduced budget for a loaded 2-core machine
    python benchmarks/learning.py --only moco,byol      # a subset

A supervised control (the same backbone, stream and budget, trained with the labels) shows what
the backbone can learn at all in the budget: self-supervised runs are not expected to beat it.

Prints one JSON document and then a one-line summary; also writes ``<out>/results.json``. Every
process it starts (services, trainers) is stopped on exit, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

READY_PATTERN = re.compile(r"serving (\d+) videos at (http://\S+?)/? ")
OBJECTIVES = ("moco", "byol", "simclr", "swav")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One pretraining configuration: objective plus the service's sampling flags."""

    name: str
    objective: str
    num_clips: int = 2  # ρ
    max_span_seconds: float | None = None  # t_max; None = global sampling


RUNS = [RunSpec(o, o) for o in OBJECTIVES] + [
    RunSpec("moco-rho4", "moco", num_clips=4),
    RunSpec("moco-tmax0", "moco", max_span_seconds=0.0),
]


# ------------------------------------------------------------------ processes

_LIVE: list[subprocess.Popen[bytes]] = []


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
    _LIVE.append(process)
    return process


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_seconds: float = 30.0) -> None:
    """``sig`` to the process, wait, then SIGKILL its whole process group (decode workers included)."""
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything left of its session (its own pgid)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.kill()
        process.wait(10)
    if process in _LIVE:
        _LIVE.remove(process)


def _stop_all() -> None:
    for process in list(_LIVE):
        _stop(process, timeout_seconds=10.0)


@contextmanager
def service(root: Path, log_path: Path, flags: Sequence[str], timeout_seconds: float = 300.0) -> Iterator[str]:
    """``clipserve start`` on 127.0.0.1 (any free port) with ``flags``; yields its URL, stops it on exit."""
    command = [sys.executable, "-m", "clipserve", "start", "--dataset", "k400", "--root", str(root), "--host",
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
                time.sleep(0.2)
        if url is None:
            raise RuntimeError(f"clipserve start did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield url
    finally:
        _stop(process)


# ------------------------------------------------------------------ data

def ensure_dataset(root: Path) -> None:
    """Build the default sample dataset (8 classes × 12 videos) into ``root`` unless it is complete."""
    from clipserve.sample import build_sample, make_sample_spec

    result = build_sample(root, make_sample_spec(), progress=False)
    if not result.already_complete:
        print(f"[learning] built the sample dataset: {result.num_videos} videos in {result.elapsed_seconds:.0f} s "
              f"-> {root}", file=sys.stderr, flush=True)


def sampling_flags(args: argparse.Namespace, *, num_clips: int, max_span_seconds: float | None) -> list[str]:
    flags = ["--num-clips", str(num_clips), "--frames-per-clip", str(args.frames), "--frame-stride", str(args.stride),
             "--crop-size", str(args.crop), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
             "--seed", str(args.seed)]
    if max_span_seconds is not None:
        flags += ["--max-span-seconds", str(max_span_seconds)]
    return flags


def read_eval_split(args: argparse.Namespace, split: str, log_path: Path) -> list[Any]:
    """One epoch of ``split`` from an ``--eval-mode`` service, clips copied out of shared memory."""
    from clipserve.client import ClipStream
    from trainer.data import SyntheticBatch

    flags = sampling_flags(args, num_clips=2, max_span_seconds=None) + ["--eval-mode", "--split", split]
    batches: list[Any] = []
    with service(args.data, log_path, flags) as url:
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


# ------------------------------------------------------------------ train and evaluate

def pretrain(args: argparse.Namespace, run: RunSpec, out_dir: Path) -> dict[str, Any]:
    """Pretrain ``run`` against its own service; returns steps done, wall time and losses."""
    ckpt_dir = out_dir / run.name
    if ckpt_dir.exists():
        import shutil

        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    flags = sampling_flags(args, num_clips=run.num_clips, max_span_seconds=run.max_span_seconds)
    with service(args.data, out_dir / f"{run.name}-service.log", flags) as url:
        command = [sys.executable, "-m", "trainer", "--objective", run.objective, "--server", url, "--profile", "cpu",
                   "--backbone", "tiny", "--max-steps", str(args.steps), "--checkpoint-dir", str(ckpt_dir),
                   "--progress", "false", "--log-every-steps", "5", "--checkpoint-every-steps", "100000",
                   "--device", "cpu", "--seed", str(args.seed), "--max-seconds", str(args.minutes_per_run * 60.0),
                   *args.trainer_flags]
        log_path = out_dir / f"{run.name}-trainer.log"
        started = time.monotonic()
        trainer = _popen(command, log_path, threads=args.trainer_threads)
        try:  # --max-seconds stops the trainer at a step boundary; a Ctrl-C is the fallback
            trainer.wait(args.minutes_per_run * 60.0 + 120.0)
        except subprocess.TimeoutExpired:
            _stop(trainer, signal.SIGINT, timeout_seconds=60.0)
        finally:
            _stop(trainer)
        wall_seconds = time.monotonic() - started
    metrics = [json.loads(line) for line in (ckpt_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (ckpt_dir / "metrics.jsonl").exists() else []
    if not (ckpt_dir / "last.pt").exists():
        raise RuntimeError(f"{run.name}: no checkpoint; trainer log:\n{log_path.read_text(errors='replace')[-3000:]}")
    from trainer.checkpoint import load_checkpoint

    steps_done = int(load_checkpoint(ckpt_dir)["step"])
    cut = steps_done < args.steps
    return {
        "steps": steps_done, "cut_by_time_budget": cut, "wall_seconds": round(wall_seconds, 1),
        "first_loss": metrics[0]["loss"] if metrics else None, "last_loss": metrics[-1]["loss"] if metrics else None,
        "mean_clips_per_second": round(sum(m["clips_per_second"] for m in metrics) / len(metrics), 2) if metrics else None,
        "mean_data_wait_fraction": round(sum(m["data_wait_fraction"] for m in metrics) / len(metrics), 3) if metrics else None,
    }


def evaluate(model: Any, bank: list[Any], queries: list[Any], k: int) -> dict[str, float]:
    """kNN top-1 (k, cosine, temperature 0.07) and linear-probe top-1 of ``model.features``."""
    import torch

    from trainer.eval import extract_features, knn_accuracy, linear_probe_accuracy

    model.eval()
    with torch.no_grad():
        f_tr, y_tr, _ = extract_features(model.features, bank, "cpu")
        f_te, y_te, _ = extract_features(model.features, queries, "cpu")
    return {"knn_top1": knn_accuracy(f_tr, y_tr, f_te, y_te, k=k),
            "knn_top1_leave_one_out": leave_one_out_knn(torch.cat([f_tr, f_te]), torch.cat([y_tr, y_te]), k=k),
            "linear_probe_top1": linear_probe_accuracy(f_tr, y_tr, f_te, y_te),
            "num_bank_videos": int(f_tr.shape[0]), "num_query_videos": int(f_te.shape[0])}


def leave_one_out_knn(features: Any, labels: Any, *, k: int, temperature: float = 0.07) -> float:
    """kNN top-1 over all videos (train + val), each the query once against all the others.

    A steadier secondary figure than the 16 val queries (one query = 6.25 points). Same voting as
    ``trainer.eval.knn_accuracy`` (cosine, top-k, weights exp(cos / temperature)).
    Shapes: features (N, F), labels (N,) int64.
    """
    import torch
    from torch.nn import functional as F

    x = F.normalize(features.float(), dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))  # never your own neighbour
    top, idx = sim.topk(min(k, x.shape[0] - 1), dim=1)
    votes = torch.zeros(x.shape[0], int(labels.max()) + 1).scatter_add_(1, labels[idx], torch.exp(top / temperature))
    return float((votes.argmax(1) == labels).float().mean())


def load_model(ckpt_dir: Path) -> Any:
    from trainer.checkpoint import load_checkpoint
    from trainer.config import config_from_dict
    from trainer.objectives import build_objective

    ckpt = load_checkpoint(ckpt_dir)
    model = build_objective(config_from_dict(ckpt["config"]), num_clips=int(ckpt["num_clips"]))
    model.load_state_dict(ckpt["model"])
    return model


def supervised_control(args: argparse.Namespace, out_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The reference a self-supervised run cannot beat: the same tiny backbone trained *with labels*
    (linear head, cross-entropy, SGD lr 0.05) on the same aug+ stream (ρ=2, global sampling) for the
    same number of steps and time cap. If it stays near chance, the budget/backbone is the limit."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from clipserve.client import ClipStream
    from trainer.backbones import build_backbone
    from trainer.utils import normalize_clips

    torch.manual_seed(args.seed)
    backbone, feature_dim = build_backbone("tiny")
    head = nn.Linear(feature_dim, 8)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05, momentum=0.9, weight_decay=1e-4)
    losses: list[float] = []
    started = time.monotonic()
    flags = sampling_flags(args, num_clips=2, max_span_seconds=None)
    with service(args.data, out_dir / "supervised-service.log", flags) as url:
        stream = ClipStream(url, transport="shm")
        try:
            backbone.train()
            for step, batch in enumerate(stream):
                if step >= args.steps or time.monotonic() - started > args.minutes_per_run * 60.0:
                    break
                x = normalize_clips(batch.clips, "cpu").flatten(0, 1)  # (B·ρ, C, T, H, W)
                y = batch.label.repeat_interleave(batch.clips.shape[1])
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
    return _Features(), {"steps": len(losses), "wall_seconds": round(time.monotonic() - started, 1),
                         "first_loss": losses[0] if losses else None, "last_loss": sum(tail) / len(tail)}


def random_model(seed: int) -> Any:
    import torch

    from trainer.config import make_config
    from trainer.objectives import build_objective

    torch.manual_seed(seed)  # as the trainer does before building (seed = --seed)
    return build_objective(make_config("moco", "cpu", server="synthetic", backbone="tiny"), num_clips=2)


# ------------------------------------------------------------------ main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "sample-k400",
                        help="sample dataset root (built with the default spec if missing)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-out" / "learning",
                        help="checkpoints, logs and results.json")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 600; --quick 250)")
    parser.add_argument("--minutes-per-run", type=float, default=None,
                        help="wall-clock cap per pretraining run, minutes (default 8; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="reduced budget (250 steps, ≤ 3 min per run)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(r.name for r in RUNS)}")
    parser.add_argument("--crop", type=int, default=64, help="crop size, pixels (H = W)")
    parser.add_argument("--frames", type=int, default=8, help="T, frames per clip")
    parser.add_argument("--stride", type=int, default=4, help="τ, frame stride (frames at 30 fps)")
    parser.add_argument("--batch-size", type=int, default=8, help="B, videos per batch")
    parser.add_argument("--workers", type=int, default=2, help="decode worker processes per service")
    parser.add_argument("--trainer-threads", type=int, default=1, help="torch threads of the trainer")
    parser.add_argument("--seed", type=int, default=0, help="service seed and trainer seed")
    parser.add_argument("--k", type=int, default=20, help="kNN neighbours")
    parser.add_argument("--random-seeds", type=int, default=3, help="random-init encoders evaluated (mean reported)")
    parser.add_argument("--no-supervised-control", action="store_true",
                        help="skip the supervised reference (same backbone, stream and budget, with labels)")
    parser.add_argument("--trainer-flag", dest="trainer_flags", action="append", default=[],
                        help="extra trainer flag, repeatable, e.g. --trainer-flag=--base-lr --trainer-flag=0.1")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 250 if args.quick else 600
    if args.minutes_per_run is None:
        args.minutes_per_run = 3.0 if args.quick else 8.0
    args.data = args.data.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runs = RUNS if args.only is None else [r for r in RUNS if r.name in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        import torch

        torch.set_num_threads(args.trainer_threads)
        ensure_dataset(args.data)
        print("[learning] reading the eval-mode train/val splits ...", file=sys.stderr, flush=True)
        bank = read_eval_split(args, "train", args.out / "eval-train-service.log")
        queries = read_eval_split(args, "val", args.out / "eval-val-service.log")

        random_results = [evaluate(random_model(seed), bank, queries, args.k) for seed in range(args.random_seeds)]
        random_knn = sum(r["knn_top1"] for r in random_results) / len(random_results)
        results: dict[str, Any] = {}
        supervised: dict[str, Any] | None = None
        for run in runs:
            print(f"[learning] pretraining {run.name} ({args.steps} steps, ≤ {args.minutes_per_run} min) ...",
                  file=sys.stderr, flush=True)
            train_info = pretrain(args, run, args.out)
            scores = evaluate(load_model(args.out / run.name), bank, queries, args.k)
            results[run.name] = {**dataclasses.asdict(run), **train_info, **scores,
                                 "knn_vs_random_points": round(100 * (scores["knn_top1"] - random_knn), 1)}
            print(f"[learning] {run.name}: kNN top-1 {scores['knn_top1']:.3f} (random {random_knn:.3f}), "
                  f"{train_info['steps']} steps in {train_info['wall_seconds']} s", file=sys.stderr, flush=True)
        if not args.no_supervised_control:
            print("[learning] supervised control (labels, same backbone / stream / budget) ...", file=sys.stderr, flush=True)
            model, info = supervised_control(args, args.out)
            scores = evaluate(model, bank, queries, args.k)
            supervised = {**info, **scores, "knn_vs_random_points": round(100 * (scores["knn_top1"] - random_knn), 1)}
            print(f"[learning] supervised control: kNN top-1 {scores['knn_top1']:.3f}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("[learning] interrupted", file=sys.stderr)
        return 130
    finally:
        _stop_all()
        signal.signal(signal.SIGTERM, previous)

    objectives_run = [o for o in OBJECTIVES if o in results]
    targets = {
        "every_objective_beats_random_by_15_points": all(results[o]["knn_vs_random_points"] >= 15 for o in objectives_run)
        if objectives_run else None,
        "rho4_ge_rho2": results["moco-rho4"]["knn_top1"] >= results["moco"]["knn_top1"]
        if {"moco", "moco-rho4"} <= set(results) else None,
        "global_ge_tmax0": results["moco"]["knn_top1"] >= results["moco-tmax0"]["knn_top1"]
        if {"moco", "moco-tmax0"} <= set(results) else None,
    }
    document = {
        "benchmark": "learning", "command": " ".join([sys.executable, *sys.argv]),
        "settings": {"data": str(args.data), "steps": args.steps, "minutes_per_run": args.minutes_per_run,
                     "crop_size_pixels": args.crop, "frames_per_clip": args.frames, "frame_stride": args.stride,
                     "batch_size": args.batch_size, "workers": args.workers, "seed": args.seed, "k": args.k,
                     "backbone": "tiny", "profile": "cpu", "trainer_flags": args.trainer_flags},
        "num_bank_videos": len({int(v) for b in bank for v in b.video_index}),
        "num_query_videos": len({int(v) for b in queries for v in b.video_index}),
        "random_init": {"knn_top1_mean": random_knn, "per_seed": random_results},
        "runs": results, "supervised_control": supervised, "targets": targets, "total_wall_seconds": round(time.monotonic() - started, 1),
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))
    summary = ", ".join(f"{name} {r['knn_top1']:.3f}" for name, r in results.items())
    if supervised is not None:
        summary += f"; supervised control {supervised['knn_top1']:.3f}"
    print(f"learning: kNN top-1 (k={args.k}, {document['num_query_videos']} val queries) random {random_knn:.3f}; "
          f"{summary}; targets {targets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
