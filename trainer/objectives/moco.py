"""ρMoCo: InfoNCE against a queue of momentum-encoder keys, generalised to ρ clips.

References:
    [0] MoCo, 2020, https://arxiv.org/abs/1911.05722
    [1] Feichtenhofer et al., A Large-Scale Study on Unsupervised Spatiotemporal Representation
        Learning, CVPR 2021, https://arxiv.org/abs/2104.14558 (eq. 1, §3.2)
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from trainer import dist as tdist
from trainer.heads import MoCoProjectionHead
from trainer.objectives.base import Objective, check_clips, check_reduction, check_temperature, per_clip, reduce_over_queries
from trainer.utils import cosine_schedule, deactivate_requires_grad, update_momentum


class InfoNCEQueueLoss(nn.Module):
    """MoCo's InfoNCE with ρ clips: every clip is the query once, the other ρ−1 clips' keys are its
    positives, the queue holds the negatives (no in-batch negatives).

    ``positives='eq1'`` (the paper, eq. 1) puts all positives in one numerator:

    .. math::
        \\ell_{i,n} = -\\log \\frac{\\sum_{j \\ne i} e^{q_{i,n} \\cdot k_{j,n} / \\alpha}}
        {\\sum_{j \\ne i} e^{q_{i,n} \\cdot k_{j,n} / \\alpha} + \\sum_m e^{q_{i,n} \\cdot u_m / \\alpha}}

    ``positives='per_positive'`` (PySlowFast) makes one InfoNCE row ``[q·k_j | q·queue]`` per
    positive j ≠ i and averages the cross-entropies over the ρ−1 rows. Both equal for ρ = 2.
    The per-query losses (averaged over the batch) are then averaged (``reduction='mean'``, paper)
    or summed (``'sum'``, PySlowFast) over the ρ queries.

    Shapes: ``q`` (ρ, B, D) and ``k`` (ρ, B, D) L2-normalised; ``queue`` (K, D) L2-normalised.
    """

    def __init__(self, temperature: float = 0.1, positives: str = "eq1", reduction: str = "mean") -> None:
        super().__init__()
        if positives not in ("eq1", "per_positive"):
            raise ValueError(f"positives must be 'eq1' (paper) or 'per_positive' (PySlowFast), got {positives!r}")
        self.temperature = check_temperature(temperature)
        self.positives = positives
        self.reduction = check_reduction(reduction)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        rho, b, _ = q.shape
        pos = torch.einsum("ibd,jbd->ijb", q, k) / self.temperature  # (ρ query clip, ρ key clip, B)
        lse_neg = torch.logsumexp(q @ queue.T / self.temperature, dim=2)  # (ρ, B)
        off_diagonal = ~torch.eye(rho, dtype=torch.bool, device=q.device)  # (ρ, ρ): j ≠ i
        if self.positives == "eq1":
            lse_pos = torch.logsumexp(pos.masked_fill(~off_diagonal[:, :, None], float("-inf")), dim=1)  # (ρ, B)
            per_row = torch.logaddexp(lse_pos, lse_neg) - lse_pos  # (ρ, B)
            per_query = per_row.mean(dim=1)  # (ρ,)
        else:
            rows = torch.logaddexp(pos, lse_neg[:, None, :]) - pos  # (ρ, ρ, B): CE of row [q·k_j | q·queue]
            per_query = (rows * off_diagonal[:, :, None]).sum(dim=(1, 2)) / ((rho - 1) * b)  # (ρ,)
        return reduce_over_queries(per_query, self.reduction)


class MoCo(Objective):
    """ρMoCo [0, 1]: online backbone + 3-layer MLP (no BN); momentum copies produce the keys for all
    ρ clips; all ρ key sets (ρ·B keys) are enqueued each step; the queue is per rank (PySlowFast).

    The momentum follows a half-cosine from ``momentum_start`` (0.994) to ``momentum_end`` (1) over
    training, updated every step. With several ranks, keys use MoCo's shuffle-BN across ranks.
    The queue starts as random unit vectors (MoCo's code) instead of PySlowFast's freeze-while-filling.
    """

    queue: torch.Tensor
    """(K, D) unit-norm keys of earlier steps (a buffer)."""
    queue_ptr: torch.Tensor
    """() long: where the next keys are written (a buffer)."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, *, hidden_dim: int = 2048, output_dim: int = 128,
        num_layers: int = 3, temperature: float = 0.1, queue_size: int = 65536, positives: str = "eq1",
        reduction: str = "mean", momentum_start: float = 0.994, momentum_end: float = 1.0, shuffle_bn: bool = True,
    ) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.backbone = backbone
        self.projection = MoCoProjectionHead(feature_dim, hidden_dim, output_dim, num_layers)
        self.backbone_momentum = deactivate_requires_grad(copy.deepcopy(backbone))
        self.projection_momentum = deactivate_requires_grad(copy.deepcopy(self.projection))
        self.criterion = InfoNCEQueueLoss(temperature, positives, reduction)
        self.momentum_start, self.momentum_end, self.shuffle_bn = momentum_start, momentum_end, shuffle_bn
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, output_dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def on_step_start(self, step: int, max_steps: int) -> dict[str, float]:
        m = cosine_schedule(step, max_steps, self.momentum_start, self.momentum_end)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection, self.projection_momentum, m)
        return {"momentum": m}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clips(x)
        q = F.normalize(per_clip(lambda c: self.projection(self.backbone(c)), x), dim=2)  # (ρ, B, D)
        with torch.no_grad():
            k = torch.stack([self._keys(x[:, i]) for i in range(x.shape[1])])  # (ρ, B, D)
        loss = self.criterion(q, k, self.queue.clone())
        self._enqueue(k.reshape(-1, k.shape[-1]))  # ρ·B keys
        return loss

    @torch.no_grad()
    def _keys(self, clips: torch.Tensor) -> torch.Tensor:
        """Momentum keys ``(B, D)`` for clips ``(B, C, T, H, W)``; shuffle-BN across ranks if distributed."""
        encode = lambda c: F.normalize(self.projection_momentum(self.backbone_momentum(c)), dim=1)  # noqa: E731
        if not (self.shuffle_bn and tdist.world_size() > 1):
            return encode(clips)
        b, r = clips.shape[0], tdist.rank()
        all_clips = tdist.gather_no_grad(clips)  # (W·B, C, T, H, W)
        perm = torch.randperm(all_clips.shape[0], device=clips.device)
        dist.broadcast(perm, src=0)
        keys_shuffled = tdist.gather_no_grad(encode(all_clips[perm[r * b : (r + 1) * b]]))  # (W·B, D), row p = sample perm[p]
        unshuffle = torch.empty_like(perm)
        unshuffle[perm] = torch.arange(perm.numel(), device=perm.device)
        return keys_shuffled[unshuffle][r * b : (r + 1) * b]

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
