"""The four objectives (one module each) and their losses; ``build_objective`` wires them from a config."""

from __future__ import annotations

from trainer.config import OBJECTIVES, TrainConfig
from trainer.objectives.base import Objective
from trainer.objectives.byol import BYOL, NegativeCosineLoss
from trainer.objectives.moco import InfoNCEQueueLoss, MoCo
from trainer.objectives.simclr import NTXentLoss, SimCLR
from trainer.objectives.swav import SwaV, SwaVLoss, sinkhorn

__all__ = [
    "BYOL", "InfoNCEQueueLoss", "MoCo", "NTXentLoss", "NegativeCosineLoss", "OBJECTIVES", "Objective",
    "SimCLR", "SwaV", "SwaVLoss", "build_objective", "sinkhorn",
]


def build_objective(config: TrainConfig, num_clips: int = 2) -> Objective:
    """The objective named by ``config.objective`` on a fresh ``config.backbone`` for ρ = ``num_clips``."""
    from trainer.backbones import build_backbone

    backbone, feature_dim = build_backbone(config.backbone)
    c = config
    if c.objective == "moco":
        return MoCo(
            backbone, feature_dim, hidden_dim=c.mlp_hidden_dim, output_dim=c.output_dim, num_layers=c.mlp_num_layers,
            temperature=c.temperature, queue_size=c.moco_queue_size, positives=c.moco_positives,
            reduction=c.loss_reduction, momentum_start=c.momentum_start, momentum_end=c.momentum_end,
            shuffle_bn=c.moco_shuffle_bn,
        )
    if c.objective == "byol":
        return BYOL(
            backbone, feature_dim, hidden_dim=c.mlp_hidden_dim, output_dim=c.output_dim, reduction=c.loss_reduction,
            momentum_start=c.momentum_start, momentum_end=c.momentum_end,
        )
    if c.objective == "simclr":
        return SimCLR(
            backbone, feature_dim, hidden_dim=c.mlp_hidden_dim, output_dim=c.output_dim, num_layers=c.mlp_num_layers,
            mlp_batch_norm=c.mlp_batch_norm, temperature=c.temperature, pairs=c.simclr_pairs, reduction=c.loss_reduction,
            positives=c.simclr_positives,
        )
    if c.objective == "swav":
        return SwaV(
            backbone, feature_dim, hidden_dim=c.mlp_hidden_dim, output_dim=c.output_dim, num_layers=c.mlp_num_layers,
            num_prototypes=c.swav_num_prototypes, temperature=c.temperature, epsilon=c.swav_epsilon,
            sinkhorn_iterations=c.swav_sinkhorn_iterations, num_assign_clips=c.swav_num_assign_clips,
            reduction=c.loss_reduction, queue_size=c.swav_queue_size, queue_start_step=c.swav_queue_start_step,
            freeze_prototypes_steps=c.swav_freeze_prototypes_steps, num_clips=num_clips,
        )
    raise ValueError(f"unknown objective {c.objective!r}; choose one of {', '.join(OBJECTIVES)}")
