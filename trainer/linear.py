"""The linear protocol of the paper (K400 linear, paper-spec §4): a linear classifier on the frozen
backbone's pooled features, trained on the augmented training stream, then the multi-view test.

    python -m trainer.linear --checkpoint runs/moco --dataset k400 --root data/k400
    python -m trainer.linear --checkpoint runs/moco --dataset k400 --root data/learnable --profile cpu --max-steps 200
    python -m trainer.linear --checkpoint random --backbone tiny --dataset k400 --root data/learnable --profile cpu
    python -m trainer.linear --checkpoint runs/moco --server URL_TRAIN --test-server URL_TEST    # running services

With ``--dataset``/``--root`` it starts two ``clipserve start`` services itself: the training stream
(ρ = 1 random clip a video, square scale-jitter crop of ``--train-crop-area`` of the frame, flip; no
colour augmentation, the paper's "VGG-style" augmentation) and the test stream (``--temporal-sampling
uniform``: ``--test-num-clips`` K clips evenly spaced × ``--test-spatial-crops`` S crops of
``--test-crop-size``, nothing random).

Head: the backbone's pooled features (pool5), frozen (no gradient, BatchNorm statistics frozen: the
backbone runs in eval mode), then a linear layer (init N(0, 0.01²)); ``--head-batch-norm`` puts a
BatchNorm1d without affine parameters before it (MAE's linear probe; the ``cpu`` profile's default,
since it makes one learning rate fit every checkpoint). The paper's repo detaches the features
(``MODEL.DETACH_FINAL_FC``) and has no BN there; it also keeps the backbone in train mode, so its
BN statistics keep moving: here they do not. Optimiser: SGD, momentum 0.9, weight decay 0, linear
warm-up then half-cosine; the paper's preset is 60 epochs, 8 warm-up, lr 4.0 at 512 videos a batch.

Datasets: any with a labelled held-out split (Kinetics and folder: train → val; ucf101/hmdb51: the
train → test lists of ``--split-id`` 1..3; ``--train-split`` / ``--test-split`` name others).

Test: softmax of every view averaged over a video's K·S views; top-1 and top-5 over the test split.
Resumable (``--resume``: ``--out-dir/last.pt``). Prints one JSON line (also ``--out-dir/result.json``);
exit status 2 on a user error, 3 for a run cut by the ``--max-seconds`` safety net (reported as failed).
"""

from __future__ import annotations

import sys

from trainer.readout import ReadoutError
from trainer.readout_run import print_result, run_protocol
from trainer.readout_config import LinearConfig, parse_config


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(LinearConfig, argv, prog="python -m trainer.linear", description=__doc__.split("\n")[0])
        result = run_protocol(config, freeze_backbone=True, split_id=config.split_id, out_dir=config.out_dir, log_prefix="linear")
    except (ReadoutError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["protocol"] = "linear: frozen backbone, linear head" + (" (BN before linear)" if config.head_batch_norm else "")
    return print_result(result, config.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
