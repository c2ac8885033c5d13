"""Fine-tuning on UCF101 / HMDB51 (the paper's Table 11 protocol, paper-spec §4): the whole network,
from a pre-trained checkpoint (or ``--checkpoint random``, the baseline), then the multi-view test.

    python -m trainer.finetune --checkpoint runs/moco --dataset ucf101 --root data/ucf101 --split-id all
    python -m trainer.finetune --checkpoint runs/moco --dataset hmdb51 --root data/hmdb51 --split-id 2 --preset cosine
    python -m trainer.finetune --checkpoint random --backbone tiny --dataset ucf101 --root data/transfer --profile cpu

For each official split (``--split-id 1``, ``2``, ``3``, or ``all``: the three in turn and the mean of
their top-1 / top-5, as the paper reports) it starts two ``clipserve start`` services itself (as
``trainer.eval --dataset`` does): the split's train list as the training stream (ρ = 1 random clip,
square scale-jitter crop, flip) and its test list as the multi-view test (``--temporal-sampling
uniform``, K clips × S crops). The network is the backbone, dropout (0.8, the paper's), and a linear
layer; every layer trains (BatchNorm in train mode).

Presets: ``paper`` (200 epochs, SGD momentum 0.9, lr 0.025 per 64 videos a batch, ×0.1 at epochs 60 /
120 / 180, weight decay 0) and ``cosine`` (the repo's ``finetune_ucf_*`` configs: half-cosine, lr 0.01
per 64 videos, the syn8 value; syn0 used 0.005). ``--profile cpu`` scales the run down for these
machines. Resumable per split (``--out-dir/split<N>/last.pt``, ``--resume``). Prints one JSON line
(also ``--out-dir/result.json``); exit status 2 on a user error (a checkpoint of another backbone, a
dataset other than ucf101/hmdb51, a split id out of range), 3 for a run cut by ``--max-seconds``.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from trainer.readout import ReadoutError
from trainer.readout_run import print_result, run_protocol
from trainer.readout_config import OFFICIAL_SPLIT_DATASETS, FinetuneConfig, parse_config
from trainer.utils import round_to_resolution

DATASETS = OFFICIAL_SPLIT_DATASETS
"""The datasets fine-tuning runs on: those with official train/test splits 1..3."""


def split_ids(value: str) -> list[int]:
    """``'1'``, ``'2'``, ``'3'`` → that split; ``'all'`` → all three."""
    if value == "all":
        return [1, 2, 3]
    if value in ("1", "2", "3"):
        return [int(value)]
    raise ReadoutError(f"--split-id ({value!r}) must be 1, 2, 3 or all (the official splits of ucf101/hmdb51)")


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(FinetuneConfig, argv, prog="python -m trainer.finetune",
                              description=__doc__.split("\n")[0])
        splits = split_ids(config.split_id)
        if config.dataset is not None and config.dataset not in DATASETS:
            raise ReadoutError(f"--dataset ({config.dataset!r}) must be one of {', '.join(DATASETS)}: fine-tuning "
                               "uses their official splits 1..3 (trainer.linear reads other datasets)")
        if config.server is not None and len(splits) > 1:
            raise ReadoutError("--split-id all needs --dataset/--root (one pair of services per split)")
        runs: list[dict[str, Any]] = []
        for split in splits:
            out = config.out_dir / f"split{split}"
            runs.append(run_protocol(config, freeze_backbone=False, split_id=split, out_dir=out, log_prefix="finetune"))
            if not runs[-1]["completed"]:
                break
    except (ReadoutError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "protocol": f"fine-tuning: whole network, dropout {config.dropout}, {config.schedule} schedule",
        "preset": config.preset, "dataset": config.dataset, "split_ids": splits, "splits": runs,
        "completed": all(r["completed"] for r in runs) and len(runs) == len(splits),
    }
    if result["completed"]:
        num_test = sum(r["num_test_videos"] for r in runs)
        for key in ("top1", "top5"):
            result[f"{key}_mean"] = round_to_resolution(statistics.fmean(r[key] for r in runs), num_test)
    for key in ("checkpoint", "backbone", "objective", "checkpoint_step"):
        result[key] = runs[0][key]
    return print_result(result, config.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
