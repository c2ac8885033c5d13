"""Readout benchmark (not a test): the paper's evaluation protocols on the learnable world, next to
the kNN monitor, and a transfer row like the paper's Table 11.

Rows (each over ``--seeds`` seeds, mean ± std of top-1 %):

- **readouts on the learnable world** (``make-sample --preset learnable``: 10 categories, 400 train /
  200 val): for a random-init backbone and the ρMoCo and ρBYOL checkpoints (ρ = 2, global sampling,
  pre-trained as ``benchmarks/learning.py`` does, ``--pretrain-steps`` steps): kNN (k = 20 on the
  mean feature of ``--eval-clips`` centre-placed clips, learning.py's monitor), and
  ``python -m trainer.linear --profile cpu`` (frozen backbone, BN + linear head, SGD at lr 0.5,
  warm-up + cosine for ``--linear-steps`` steps on the augmented ρ = 1 stream, then the multi-view test: 4
  clips evenly spaced per val video, softmax averaged; one spatial crop, the frames being square);
- **transfer** (``make-sample --preset transfer --layout ucf101``: the same world with 10 categories
  the pre-training never saw, ``--transfer-videos-per-class`` videos a class, so official split 1 has
  2/3 of them a class as labels): ``python -m trainer.finetune --profile cpu --split-id 1`` from the
  ρMoCo checkpoint and from random init, ``--finetune-steps`` steps each. Target: pre-training
  beats random init by ≥ 10 points top-1, and by more than the two rows' seed spreads (std) added.

Every run is bounded by steps. ``--minutes-per-run`` is only a safety net far above a run's
expected time: a run it cuts is reported under ``failed_runs`` and left out of the means.

    python benchmarks/readout.py                        # 2 seeds: 8.4 min (2026-12-07, shared 2-core VM, data built)
    python benchmarks/readout.py --seeds 3 --linear-steps 1000 --finetune-steps 800

Pre-trained checkpoints are kept in ``<out>/<objective>-seed<N>`` and reused by a later run with the
same ``--pretrain-steps`` (``--fresh`` trains them again). Output: ``<out>/results.json`` and the JSON
on stdout, then a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import learning  # noqa: E402 (the sibling benchmark: data, pre-training, kNN)

OBJECTIVES = ("moco", "byol")
"""The pre-trained rows (ρ = 2, global sampling)."""
TRANSFER_OBJECTIVE = "moco"
"""The checkpoint fine-tuned in the transfer row."""


def log(message: str) -> None:
    print(f"[readout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1; 0 for one value; None for none)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return round(mean, 2), round(math.sqrt(var), 2)


def run_command(command: list[str], log_path: Path, timeout_seconds: float) -> dict[str, Any]:
    """Run a readout command; its JSON result, or ``{"completed": False, "error": ...}``."""
    with open(log_path, "wb") as handle:
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=handle, cwd=REPO_ROOT,
                                  env=learning._env(1), timeout=timeout_seconds + 300)
        except subprocess.TimeoutExpired:
            return {"completed": False, "error": f"killed after {timeout_seconds + 300:.0f} s"}
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if not lines:
        return {"completed": False, "error": f"exit {done.returncode}, no result; log {log_path}"}
    result = json.loads(lines[-1])
    result.setdefault("completed", done.returncode == 0)
    return result


def init_checkpoint(args: argparse.Namespace, init: str, seed: int) -> str:
    return "random" if init == "random" else str(args.out / f"{init}-seed{seed}")


def linear_command(args: argparse.Namespace, init: str, seed: int) -> list[str]:
    return [sys.executable, "-m", "trainer.linear", "--checkpoint", init_checkpoint(args, init, seed), "--backbone",
            "tiny", "--dataset", "k400", "--root", str(args.data), "--profile", "cpu", "--max-steps",
            str(args.linear_steps), "--seed", str(seed), "--out-dir", str(args.out / f"linear-{init}-seed{seed}"),
            "--max-seconds", str(args.minutes_per_run * 60)]


def finetune_command(args: argparse.Namespace, init: str, seed: int) -> list[str]:
    return [sys.executable, "-m", "trainer.finetune", "--checkpoint", init_checkpoint(args, init, seed), "--backbone",
            "tiny", "--dataset", "ucf101", "--root", str(args.transfer_data), "--split-id", "1", "--profile", "cpu", "--preset", "cosine",
            "--max-steps", str(args.finetune_steps), "--seed", str(seed),
            "--out-dir", str(args.out / f"finetune-{init}-seed{seed}"), "--max-seconds", str(args.minutes_per_run * 60)]


def pretrained(args: argparse.Namespace, learning_args: argparse.Namespace, objective: str, seed: int) -> dict[str, Any]:
    """Pre-train ``objective`` with ``seed`` (learning.py's recipe), or reuse a complete checkpoint."""
    from trainer.checkpoint import load_checkpoint

    folder = args.out / f"{objective}-seed{seed}"
    if not args.fresh and (folder / "last.pt").exists() and int(load_checkpoint(folder)["step"]) == args.pretrain_steps:
        return {"seed": seed, "steps": args.pretrain_steps, "cut_by_time_budget": False, "reused": True}
    return learning.pretrain(learning_args, learning.RunSpec(objective, objective), seed)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "learnable-k400",
                        help="the learnable world (built if missing)")
    parser.add_argument("--transfer-data", type=Path, default=REPO_ROOT / "data" / "transfer-ucf101",
                        help="the transfer world in the UCF101 layout (built if missing)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-out" / "readout")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per row (>= 2)")
    parser.add_argument("--pretrain-steps", type=int, default=800, help="ρMoCo / ρBYOL pre-training steps")
    parser.add_argument("--linear-steps", type=int, default=500, help="trainer.linear steps (20 epochs of 400 at B=16)")
    parser.add_argument("--finetune-steps", type=int, default=600, help="trainer.finetune steps (120 epochs of 80)")
    parser.add_argument("--transfer-videos-per-class", type=int, default=12,
                        help="videos a class in the transfer world (split 1: 8 train, 4 test)")
    parser.add_argument("--parallel", type=int, default=2, help="runs in flight at once")
    parser.add_argument("--minutes-per-run", type=float, default=30.0, help="safety net per run (a cut run fails)")
    parser.add_argument("--fresh", action="store_true", help="pre-train again even if checkpoints exist")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error(f"--seeds ({args.seeds}) must be >= 2: the rows report a spread over seeds")
    args.data, args.out, args.transfer_data = args.data.resolve(), args.out.resolve(), args.transfer_data.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    learning_args = learning.parse_args(["--data", str(args.data), "--out", str(args.out), "--steps",
                                         str(args.pretrain_steps), "--seeds", str(args.seeds), "--minutes-per-run",
                                         str(args.minutes_per_run), "--no-supervised-control"])
    try:
        import torch

        from clipserve.sample_layouts import build_layout_sample, make_layout_spec

        torch.set_num_threads(1)
        learning.ensure_dataset(learning_args)
        built = build_layout_sample(args.transfer_data, make_layout_spec(
            "ucf101", 10, args.transfer_videos_per_class, seed=0, world="transfer"), workers=1)
        log(built.summary())

        jobs = [(objective, seed) for objective in OBJECTIVES for seed in range(args.seeds)]
        log(f"pre-training {len(jobs)} runs ({args.pretrain_steps} steps), {args.parallel} at a time ...")
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            infos = dict(zip(jobs, pool.map(lambda job: pretrained(args, learning_args, *job), jobs)))
        failed = [{"run": f"{o}-seed{s}", **info} for (o, s), info in infos.items() if info["cut_by_time_budget"]]
        usable = {job for job, info in infos.items() if not info["cut_by_time_budget"]}

        log("kNN monitor (learning.py's eval-mode bank and queries) ...")
        bank = learning.read_eval_split(learning_args, "train")
        queries = learning.read_eval_split(learning_args, "val")
        knn: dict[str, list[dict[str, Any]]] = {"random": [], **{o: [] for o in OBJECTIVES}}
        for seed in range(args.seeds):
            knn["random"].append({"seed": seed, **learning.evaluate(learning.random_model(learning_args, seed), bank,
                                                                     queries, learning_args)})
            for objective in OBJECTIVES:
                if (objective, seed) in usable:
                    model = learning.load_model(args.out / f"{objective}-seed{seed}")
                    knn[objective].append({"seed": seed, **learning.evaluate(model, bank, queries, learning_args)})

        inits = ["random", *OBJECTIVES]
        readouts = [("linear", init, seed) for init in inits for seed in range(args.seeds)
                    if init == "random" or (init, seed) in usable]
        readouts += [("finetune", init, seed) for init in ("random", TRANSFER_OBJECTIVE) for seed in range(args.seeds)
                     if init == "random" or (init, seed) in usable]
        log(f"{len(readouts)} readout runs ({args.linear_steps} linear / {args.finetune_steps} fine-tuning steps) ...")

        def readout(job: tuple[str, str, int]) -> dict[str, Any]:
            kind, init, seed = job
            command = linear_command(args, init, seed) if kind == "linear" else finetune_command(args, init, seed)
            result = run_command(command, args.out / f"{kind}-{init}-seed{seed}.log", args.minutes_per_run * 60)
            log(f"{kind} {init} seed {seed}: completed {result.get('completed')}, top-1 "
                f"{result.get('top1', result.get('top1_mean'))}")
            return {"kind": kind, "init": init, "seed": seed, **result}

        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            results = list(pool.map(readout, readouts))
    finally:
        learning._stop_all()

    rows: dict[str, dict[str, Any]] = {}
    for init in inits:
        linear = [r for r in results if r["kind"] == "linear" and r["init"] == init]
        done = [r for r in linear if r.get("completed")]
        failed += [{"run": f"linear-{init}-seed{r['seed']}", "error": r.get("error")} for r in linear if not r.get("completed")]
        knn_mean, knn_std = mean_std([100 * r["knn_top1"] for r in knn[init]])
        probe_mean, probe_std = mean_std([100 * r["linear_top1"] for r in knn[init]])
        lin_mean, lin_std = mean_std([100 * r["top1"] for r in done])
        top5_mean, top5_std = mean_std([100 * r["top5"] for r in done])
        rows[init] = {"knn_top1_mean": knn_mean, "knn_top1_std": knn_std, "probe_top1_mean": probe_mean,
                      "probe_top1_std": probe_std, "linear_multiview_top1_mean": lin_mean,
                      "linear_multiview_top1_std": lin_std, "linear_multiview_top5_mean": top5_mean,
                      "linear_multiview_top5_std": top5_std, "seeds": [r["seed"] for r in done],
                      "per_seed": {"knn": knn[init], "linear": done}}
    transfer: dict[str, Any] = {}
    for init in ("random", TRANSFER_OBJECTIVE):
        runs = [r for r in results if r["kind"] == "finetune" and r["init"] == init]
        done = [r for r in runs if r.get("completed")]
        failed += [{"run": f"finetune-{init}-seed{r['seed']}", "error": r.get("error")} for r in runs if not r.get("completed")]
        mean, std = mean_std([100 * r["top1_mean"] for r in done])
        transfer[init] = {"top1_mean": mean, "top1_std": std, "seeds": [r["seed"] for r in done], "per_seed": done}
    pre, rand = transfer[TRANSFER_OBJECTIVE], transfer["random"]
    gain = None if pre["top1_mean"] is None or rand["top1_mean"] is None else round(pre["top1_mean"] - rand["top1_mean"], 2)
    spread = None if gain is None else round(pre["top1_std"] + rand["top1_std"], 2)
    document = {
        "benchmark": "readout", "command": " ".join(["python", "benchmarks/readout.py", *(argv or sys.argv[1:])]),
        "settings": {"seeds": args.seeds, "pretrain_steps": args.pretrain_steps, "linear_steps": args.linear_steps,
                     "finetune_steps": args.finetune_steps, "transfer_videos_per_class": args.transfer_videos_per_class,
                     "data": str(args.data), "transfer_data": str(args.transfer_data), "eval_clips": learning_args.eval_clips},
        "learnable_world": rows,
        "transfer": {**transfer, "pretrained_objective": TRANSFER_OBJECTIVE, "gain_points": gain,
                     "spread_points": spread,
                     "target_met": None if gain is None else bool(gain >= 10 and gain > spread)},
        "failed_runs": failed,
        "total_wall_seconds": round(time.monotonic() - started, 1),
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))
    line = "; ".join(f"{init}: kNN {r['knn_top1_mean']}±{r['knn_top1_std']}, linear/multi-view "
                     f"{r['linear_multiview_top1_mean']}±{r['linear_multiview_top1_std']}" for init, r in rows.items())
    print(f"readout: top-1 % {line}; transfer (fine-tune, split 1): {TRANSFER_OBJECTIVE} {pre['top1_mean']}±"
          f"{pre['top1_std']} vs random {rand['top1_mean']}±{rand['top1_std']} (gain {gain}, target met "
          f"{document['transfer']['target_met']}); {len(failed)} failed run(s); in "
          f"{document['total_wall_seconds'] / 60:.1f} min -> {args.out / 'results.json'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
