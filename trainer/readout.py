"""What ``trainer.linear`` and ``trainer.finetune`` read out with: the backbone of a pre-trained
checkpoint, a classifier on it, and the multi-view test (softmax averaged over a video's views,
top-1 / top-5). Their training loop is ``trainer.readout_fit``, their services and runs
``trainer.readout_run``.

The multi-view test reads batches ``(B, V, C, T, H, W)`` from a service started with
``--temporal-sampling uniform --num-clips K --spatial-crops S`` (V = K·S views per video, view
``k·S + s``): every view is classified, the softmax of each is taken and the V probability vectors
of a video are averaged (PySlowFast's test: ``preds`` summed over a video's clips, ``ensemble
method: sum``; the mean has the same argmax). Top-k is computed on those per-video averages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trainer.checkpoint import load_checkpoint
from trainer.data import first_epoch_videos
from trainer.utils import normalize_clips, round_to_resolution

RANDOM_INIT = "random"
"""The ``--checkpoint`` value for a randomly initialised backbone (the baseline rows)."""


class ReadoutError(ValueError):
    """A user error of a readout command (bad checkpoint, dataset, split): printed, exit status 2."""


def load_backbone(checkpoint: str, backbone: str | None, *, seed: int = 0) -> tuple[nn.Module, int, dict[str, Any]]:
    """The online backbone of a ``python -m trainer`` checkpoint (file or directory), or a random one.

    Args:
        checkpoint: a checkpoint path, or ``'random'`` for a fresh backbone (initialised from ``seed``).
        backbone: the backbone the caller expects; a checkpoint of another backbone is refused.
            None: the checkpoint's own (``tiny`` for ``'random'``).

    Returns:
        ``(backbone, feature_dim, info)`` with info's ``checkpoint``, ``backbone``, ``objective``,
        ``checkpoint_step``.

    Raises:
        ReadoutError: the checkpoint is missing, was trained with another backbone, or its weights do
            not fit the backbone it names.
    """
    from trainer.backbones import BACKBONES, build_backbone

    if backbone is not None and backbone not in BACKBONES:
        raise ReadoutError(f"--backbone ({backbone!r}) must be one of {', '.join(BACKBONES)}")
    if checkpoint == RANDOM_INIT:
        name = backbone or "tiny"
        torch.manual_seed(seed)
        module, dim = build_backbone(name)
        return module, dim, {"checkpoint": RANDOM_INIT, "backbone": name, "objective": None, "checkpoint_step": 0}
    try:
        ckpt = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        raise ReadoutError(f"{exc} (or pass --checkpoint {RANDOM_INIT} for a randomly initialised backbone)") from None
    config = ckpt.get("config") or {}
    trained = config.get("backbone")
    if trained is None or "model" not in ckpt:
        raise ReadoutError(f"{checkpoint} is not a checkpoint of python -m trainer (no config.backbone / model)")
    if backbone is not None and backbone != trained:
        raise ReadoutError(f"the checkpoint {checkpoint} was pre-trained with backbone {trained!r}, not {backbone!r}: "
                           f"pass --backbone {trained} (or leave it out), or a checkpoint of {backbone}")
    module, dim = build_backbone(trained)
    state = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ReadoutError(f"the weights in {checkpoint} do not fit backbone {trained!r}: {str(exc)[:300]}") from None
    return module, dim, {"checkpoint": str(checkpoint), "backbone": trained, "objective": config.get("objective"),
                         "checkpoint_step": int(ckpt.get("step", 0))}


class VideoClassifier(nn.Module):
    """Backbone → pooled features ``(N, F)`` → dropout → [BatchNorm1d without affine] → linear ``(N, classes)``.

    ``freeze_backbone``: the backbone's parameters get no gradient and it stays in eval mode (its
    BatchNorm statistics do not move), so only the head learns: the linear protocol. Otherwise
    (fine-tuning) the whole network trains.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, *, dropout: float = 0.0,
                 batch_norm: bool = False, freeze_backbone: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ReadoutError(f"num_classes ({num_classes}) must be >= 2 for a classifier")
        if not 0.0 <= dropout < 1.0:
            raise ReadoutError(f"dropout ({dropout}) must be in [0, 1)")
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.BatchNorm1d(feature_dim, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)  # PySlowFast's head init (MODEL.FC_INIT_STD)
        nn.init.zeros_(self.linear.bias)
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> VideoClassifier:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W)`` normalised clips → ``(N, classes)`` logits."""
        if self.freeze_backbone:
            with torch.no_grad():
                features = self.backbone(clips)  # (N, F)
        else:
            features = self.backbone(clips)  # (N, F)
        return self.linear(self.norm(self.dropout(features)))


def average_view_probabilities(logits: torch.Tensor, views_per_video: int) -> torch.Tensor:
    """Per-video class probabilities: the softmax of each view, averaged over the video's views.

    Args:
        logits: ``(B·V, classes)``, the V views of a video consecutive (batch row b's views are
            rows ``b·V .. b·V + V − 1``, as ``clips.flatten(0, 1)`` of a ``(B, V, ...)`` batch lays them out).
        views_per_video: V ≥ 1.

    Returns:
        ``(B, classes)``, each row a probability vector.
    """
    if views_per_video < 1 or logits.shape[0] % views_per_video:
        raise ValueError(f"logits has {logits.shape[0]} rows, not a multiple of views_per_video ({views_per_video})")
    return F.softmax(logits.float(), dim=1).view(-1, views_per_video, logits.shape[1]).mean(dim=1)


def topk_accuracy(probabilities: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (k capped at the class count).

    Shapes: probabilities ``(N, classes)``, labels ``(N,)`` int64. Returns a fraction in [0, 1].
    """
    if probabilities.shape[0] == 0:
        raise ValueError("top-k accuracy of no samples")
    top = probabilities.topk(min(k, probabilities.shape[1]), dim=1).indices  # (N, k)
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


@dataclass
class MultiviewResult:
    """The multi-view test of one split: per-video probabilities, labels and video indices."""

    probabilities: torch.Tensor
    """``(N, classes)`` softmax averaged over each video's views."""
    labels: torch.Tensor
    video_index: torch.Tensor
    views_per_video: int

    def summary(self) -> dict[str, Any]:
        num_test = int(self.labels.shape[0])  # accuracies rounded to the 1/num_test_videos they resolve
        return {"top1": round_to_resolution(topk_accuracy(self.probabilities, self.labels, 1), num_test),
                "top5": round_to_resolution(topk_accuracy(self.probabilities, self.labels, 5), num_test),
                "num_test_videos": num_test, "views_per_video": self.views_per_video}


@torch.no_grad()
def multiview_test(model: nn.Module, batches: Iterable[Any], device: torch.device | str, *,
                   max_batches: int | None = None) -> MultiviewResult:
    """Classify one epoch of a multi-view stream: every view of every (non-padding, first-seen) video,
    softmax averaged over its views (``average_view_probabilities``). Reads until ``epoch`` changes,
    the iterable ends or ``max_batches``; ``model`` maps ``(N, C, T, H, W)`` → ``(N, classes)``."""
    was_training = model.training
    model.eval()
    probabilities, labels, videos = [], [], []
    views = 0
    try:
        for _, batch, keep in first_epoch_videos(batches, max_batches):
            x = normalize_clips(batch.clips[keep], device)  # (b, V, C, T, H, W)
            views = x.shape[1]
            probabilities.append(average_view_probabilities(model(x.flatten(0, 1)), views).cpu())  # (b, classes)
            labels.append(torch.as_tensor(batch.label)[keep].long())
            videos.append(torch.as_tensor(batch.video_index)[keep].long())
    finally:
        model.train(was_training)
    if not probabilities:
        raise ReadoutError("the test stream produced no (non-padding) videos")
    result = MultiviewResult(torch.cat(probabilities), torch.cat(labels), torch.cat(videos), views)
    if int(result.labels.min()) < 0:
        raise ReadoutError("the test split has unlabelled videos (label -1): test on a labelled split")
    return result
