"""ρBYOL: predict the momentum encoder's projection of the other clips (negative cosine).

References:
    [0] BYOL, 2020, https://arxiv.org/abs/2006.07733
    [1] Feichtenhofer et al., CVPR 2021, https://arxiv.org/abs/2104.14558 (§3.2)
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from trainer.heads import BYOLPredictionHead, BYOLProjectionHead
from trainer.objectives.base import Objective, check_clips, check_reduction, per_clip, reduce_over_queries
from trainer.utils import cosine_schedule, deactivate_requires_grad, update_momentum


class NegativeCosineLoss(nn.Module):
    """−2·cos between each clip's prediction and the target projections of the other ρ−1 clips.

    .. math::
        \\ell_i = \\frac{1}{B(\\rho-1)} \\sum_n \\sum_{j \\ne i} -2 \\frac{p_{i,n} \\cdot z_{j,n}}{\\|p_{i,n}\\| \\|z_{j,n}\\|}

    (PySlowFast: ``-(p̂·k̂)/T`` with T = 0.5; equal to the MSE of normalised vectors up to +2.)
    Per-query losses are averaged (``'mean'``, paper) or summed (``'sum'``, PySlowFast) over ρ.

    Shapes: ``p`` (ρ, B, D) online predictions, ``z`` (ρ, B, D) target projections (no gradient).
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        rho = p.shape[0]
        cos = torch.einsum("ibd,jbd->ijb", F.normalize(p, dim=2), F.normalize(z, dim=2))  # (ρ, ρ, B)
        off_diagonal = ~torch.eye(rho, dtype=torch.bool, device=p.device)
        per_query = -2.0 * (cos * off_diagonal[:, :, None]).sum(dim=(1, 2)) / ((rho - 1) * p.shape[1])  # (ρ,)
        return reduce_over_queries(per_query, self.reduction)


class BYOL(Objective):
    """ρBYOL [0, 1]: online backbone → projector (4096→256, BN) → predictor (4096→256, BN);
    the target is a momentum copy of backbone + projector, momentum 0.996 → 1 (half-cosine)."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, *, hidden_dim: int = 4096, output_dim: int = 256,
        reduction: str = "mean", momentum_start: float = 0.996, momentum_end: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = BYOLProjectionHead(feature_dim, hidden_dim, output_dim)
        self.prediction = BYOLPredictionHead(output_dim, hidden_dim, output_dim)
        self.backbone_momentum = deactivate_requires_grad(copy.deepcopy(backbone))
        self.projection_momentum = deactivate_requires_grad(copy.deepcopy(self.projection))
        self.criterion = NegativeCosineLoss(reduction)
        self.momentum_start, self.momentum_end = momentum_start, momentum_end

    def on_step_start(self, step: int, max_steps: int) -> dict[str, float]:
        m = cosine_schedule(step, max_steps, self.momentum_start, self.momentum_end)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection, self.projection_momentum, m)
        return {"momentum": m}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clips(x)
        p = per_clip(lambda c: self.prediction(self.projection(self.backbone(c))), x)  # (ρ, B, D)
        with torch.no_grad():
            z = per_clip(lambda c: self.projection_momentum(self.backbone_momentum(c)), x)  # (ρ, B, D)
        return self.criterion(p, z)
