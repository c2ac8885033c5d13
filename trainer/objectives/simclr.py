"""ρSimCLR: NT-Xent over all ρ·B clips of the global batch, every other clip of the same video a positive.

References:
    [0] SimCLR, 2020, https://arxiv.org/abs/2002.05709
    [1] Feichtenhofer et al., CVPR 2021, https://arxiv.org/abs/2104.14558 (§3.2)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainer import dist as tdist
from trainer.heads import SimCLRProjectionHead
from trainer.objectives.base import Objective, check_clips, check_reduction, check_temperature, per_clip, reduce_over_queries


class NTXentLoss(nn.Module):
    """Multi-positive NT-Xent. For anchor clip i of video n, over all N = ρ·W·B clips of the global
    batch (gathered across ranks with gradient), self-similarity excluded.

    ``positives='eq1'`` (the default; the paper's eq. 1, the form ρMoCo's default uses) puts all
    ρ−1 positives in one numerator, over a denominator of every other clip of the batch (the
    positives included):

    .. math::
        \\ell_{i,n} = -\\log \\frac{\\sum_{j \\ne i} e^{z_{i,n} \\cdot z_{j,n} / \\alpha}}
        {\\sum_{(j',m) \\ne (i,n)} e^{z_{i,n} \\cdot z_{j',m} / \\alpha}}

    ``positives='supcon'`` averages each positive's log-probability over the same denominator
    (SupCon's L_out form, https://arxiv.org/abs/2004.11362, eq. 2):

    .. math::
        \\ell_{i,n} = -\\frac{1}{\\rho-1} \\sum_{j \\ne i} \\log
        \\frac{e^{z_{i,n} \\cdot z_{j,n} / \\alpha}}{\\sum_{(j',m) \\ne (i,n)} e^{z_{i,n} \\cdot z_{j',m} / \\alpha}}

    The two are equal for ρ = 2 (one positive); for ρ > 2 eq. 1 is never the larger
    (−log Σ_j p_j ≤ −log max_j p_j ≤ −mean_j log p_j). For ρ = 2 this is SimCLR's NT-Xent. ``pairs='consecutive'`` is PySlowFast's
    ``SEQUENTIAL`` variant: ordinary two-clip NT-Xent on the pairs (0,1), (1,2), …, (ρ−2, ρ−1)
    (ρ−1 of the ρ(ρ−1)/2 pairs; one positive each, so ``positives`` does not matter), combined by
    ``reduction`` (PySlowFast sums them). With ``pairs='all'`` the per-clip-index losses (averaged
    over anchors) are averaged ('mean', paper) or summed over ρ. Each rank's loss covers its own
    anchors; DDP's averaging then gives the global-batch gradient.

    Shapes: ``z`` (ρ, B, D), this rank's embeddings (normalised here).
    """

    def __init__(
        self, temperature: float = 0.1, pairs: str = "all", reduction: str = "mean", gather_distributed: bool = True,
        positives: str = "eq1",
    ) -> None:
        super().__init__()
        if pairs not in ("all", "consecutive"):
            raise ValueError(f"pairs must be 'all' (paper) or 'consecutive' (PySlowFast), got {pairs!r}")
        if positives not in ("eq1", "supcon"):
            raise ValueError(f"positives must be 'eq1' (paper, eq. 1) or 'supcon' (each positive's log-probability averaged), got {positives!r}")
        self.temperature = check_temperature(temperature)
        self.pairs = pairs
        self.positives = positives
        self.reduction = check_reduction(reduction)
        self.gather_distributed = gather_distributed

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = F.normalize(z, dim=2)
        if self.pairs == "all":
            return reduce_over_queries(self._per_clip_loss(z), self.reduction)
        pair_losses = torch.stack([self._per_clip_loss(z[i : i + 2]).mean() for i in range(z.shape[0] - 1)])
        return reduce_over_queries(pair_losses, self.reduction)

    def _per_clip_loss(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (P, B, D) normalised → mean loss per clip index ``(P,)`` over this rank's anchors."""
        p, b, _ = z.shape
        if self.gather_distributed and tdist.world_size() > 1:
            z_all = torch.cat(tdist.gather(z), dim=1)  # (P, W·B, D), rank r's videos at columns r·B …
            offset = tdist.rank() * b
        else:
            z_all, offset = z, 0
        n = z_all.shape[1]
        logits = torch.einsum("ibd,jnd->ibjn", z, z_all) / self.temperature  # (P, B, P, W·B)
        is_self = torch.zeros(p, b, p, n, dtype=torch.bool, device=z.device)
        idx_i, idx_b = torch.meshgrid(torch.arange(p, device=z.device), torch.arange(b, device=z.device), indexing="ij")
        is_self[idx_i, idx_b, idx_i, idx_b + offset] = True
        logits = logits.masked_fill(is_self, float("-inf"))
        log_prob = logits.reshape(p, b, p * n).log_softmax(dim=2).reshape(p, b, p, n)
        same_video = torch.diagonal(log_prob[:, :, :, offset : offset + b], dim1=1, dim2=3)  # (P, P, B): [i, j, b]
        off_diagonal = ~torch.eye(p, dtype=torch.bool, device=z.device)[:, :, None]  # (P, P, 1): j ≠ i
        if self.positives == "eq1":  # −log(Σ_j≠i p_ij): one numerator over all positives
            per_anchor = -torch.logsumexp(same_video.masked_fill(~off_diagonal, float("-inf")), dim=1)  # (P, B)
        else:  # −(1/(P−1)) Σ_j≠i log p_ij
            per_anchor = -(same_video.masked_fill(~off_diagonal, 0.0)).sum(dim=1) / (p - 1)  # (P, B)
        return per_anchor.mean(dim=1)  # (P,)


class SimCLR(Objective):
    """ρSimCLR [0, 1]: backbone + 3-layer MLP (BN per the paper; ``mlp_batch_norm=False`` is
    PySlowFast's config) → 128-d, NT-Xent with in-batch negatives over the global batch."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, *, hidden_dim: int = 2048, output_dim: int = 128,
        num_layers: int = 3, mlp_batch_norm: bool = True, temperature: float = 0.1, pairs: str = "all",
        reduction: str = "mean", positives: str = "eq1",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = SimCLRProjectionHead(feature_dim, hidden_dim, output_dim, num_layers, mlp_batch_norm)
        self.criterion = NTXentLoss(temperature, pairs, reduction, positives=positives)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clips(x)
        return self.criterion(per_clip(lambda c: self.projection(self.backbone(c)), x))  # z: (ρ, B, D)
