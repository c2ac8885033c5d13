"""ρSwAV: swapped prediction of Sinkhorn-Knopp codes between all pairs of a video's ρ clips.

References:
    [0] SwAV, 2020, https://arxiv.org/abs/2006.09882
    [1] Feichtenhofer et al., CVPR 2021, https://arxiv.org/abs/2104.14558 (§3.2)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainer import dist as tdist
from trainer.heads import SwaVProjectionHead, SwaVPrototypes
from trainer.objectives.base import Objective, check_clips, check_reduction, check_temperature, per_clip, reduce_over_queries


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, distributed: bool = True) -> torch.Tensor:
    """Sinkhorn-Knopp equipartition (SwAV's ``distributed_sinkhorn``).

    ``scores`` (N, K) prototype scores of this rank's N samples → codes (N, K): every row sums to 1
    (the final normalisation is over samples), and with enough iterations every prototype receives
    N_total/K of the mass over the global batch. With ``distributed`` the row and total sums are
    all-reduced across ranks, so the result equals a single-process Sinkhorn on the concatenation.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0 (SwAV uses 0.05), got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1 (SwAV uses 3), got {iterations}")
    reduce = tdist.all_reduce_sum_ if distributed else (lambda t: t)
    q = torch.exp(scores.double() / epsilon).T  # (K, N), float64: exp(1/0.05) ≈ 5e8 per entry
    k = q.shape[0]
    n_total = q.shape[1] * (tdist.world_size() if distributed else 1)
    q /= reduce(q.sum())
    for _ in range(iterations):
        q /= reduce(q.sum(dim=1, keepdim=True))  # rows (prototypes) sum to 1 …
        q /= k  # … then to 1/K
        q /= q.sum(dim=0, keepdim=True)  # columns (samples) sum to 1 …
        q /= n_total  # … then to 1/N_total
    return (q * n_total).T.to(scores.dtype)  # (N, K), rows sum to 1


class SwaVLoss(nn.Module):
    """Swapped prediction over clip pairs. For each assigned clip i (all ρ by default;
    ``num_assign_clips=2`` is PySlowFast's ``crops_for_assign=[0, 1]``) with codes
    ``q_i = sinkhorn(scores_i)``, and every other clip v ≠ i:

    .. math::
        \\ell_{i,v} = -\\frac{1}{B} \\sum_n \\sum_k q_{i,n,k} \\log \\mathrm{softmax}(s_{v,n} / \\alpha)_k

    averaged over v, then averaged (``'mean'``) or summed (``'sum'``) over the assigned clips.

    Shapes: ``scores`` (ρ, B, K) = normalised embeddings · normalised prototypes; ``queue_scores``
    optional (ρ_assign, L, K) scores of queued embeddings, prepended before Sinkhorn.
    """

    def __init__(
        self, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3, num_assign_clips: int = 0,
        reduction: str = "mean", distributed: bool = True,
    ) -> None:
        super().__init__()
        if num_assign_clips < 0:
            raise ValueError(f"num_assign_clips must be >= 0 (0 = all ρ clips), got {num_assign_clips}")
        self.temperature = check_temperature(temperature)
        self.epsilon, self.iterations = epsilon, iterations
        self.num_assign_clips = num_assign_clips
        self.reduction = check_reduction(reduction)
        self.distributed = distributed

    def assigned_clips(self, rho: int) -> int:
        return rho if self.num_assign_clips == 0 else min(self.num_assign_clips, rho)

    def forward(self, scores: torch.Tensor, queue_scores: torch.Tensor | None = None) -> torch.Tensor:
        rho, b, _ = scores.shape
        log_p = F.log_softmax(scores / self.temperature, dim=2)  # (ρ, B, K)
        per_assigned = []
        for i in range(self.assigned_clips(rho)):
            s = scores[i].detach()  # (B, K)
            if queue_scores is not None:
                s = torch.cat([queue_scores[i], s])  # (L + B, K)
            codes = sinkhorn(s, self.epsilon, self.iterations, self.distributed)[-b:]  # (B, K)
            terms = [-(codes * log_p[v]).sum(dim=1).mean() for v in range(rho) if v != i]
            per_assigned.append(torch.stack(terms).mean())
        return reduce_over_queries(torch.stack(per_assigned), self.reduction)


class SwaV(Objective):
    """ρSwAV [0, 1]: backbone + 3-layer MLP (BN) → 128-d normalised embeddings, 1,000 prototypes
    (re-normalised every step, gradients dropped for the first ``freeze_prototypes_steps``), an
    optional per-rank queue of past embeddings (length ``queue_size``, used from ``queue_start_step``
    once full) that only feeds Sinkhorn."""

    queue: torch.Tensor
    """(ρ_assign, L, D) queued embeddings, newest first (a buffer)."""
    queue_count: torch.Tensor
    """() long: embeddings enqueued so far (a buffer)."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, *, hidden_dim: int = 2048, output_dim: int = 128,
        num_layers: int = 3, num_prototypes: int = 1000, temperature: float = 0.1, epsilon: float = 0.05,
        sinkhorn_iterations: int = 3, num_assign_clips: int = 0, reduction: str = "mean", queue_size: int = 0,
        queue_start_step: int = 0, freeze_prototypes_steps: int = 0, num_clips: int = 2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = SwaVProjectionHead(feature_dim, hidden_dim, output_dim, num_layers)
        self.prototypes = SwaVPrototypes(output_dim, num_prototypes)
        self.criterion = SwaVLoss(temperature, epsilon, sinkhorn_iterations, num_assign_clips, reduction)
        self.queue_start_step, self.freeze_prototypes_steps = queue_start_step, freeze_prototypes_steps
        n_assign = self.criterion.assigned_clips(num_clips)
        self.register_buffer("queue", torch.zeros(n_assign, queue_size, output_dim))  # (ρ_assign, L, D)
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # embeddings enqueued so far
        self._use_queue = False

    def on_step_start(self, step: int, max_steps: int) -> dict[str, float]:
        self.prototypes.normalize_()
        size = self.queue.shape[1]
        self._use_queue = size > 0 and step >= self.queue_start_step and int(self.queue_count) >= size
        return {"swav_queue_active": float(self._use_queue)}

    def on_after_backward(self, step: int) -> None:
        if step < self.freeze_prototypes_steps:
            for p in self.prototypes.parameters():
                p.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clips(x)
        z = F.normalize(per_clip(lambda c: self.projection(self.backbone(c)), x), dim=2)  # (ρ, B, D)
        scores = self.prototypes(z)  # (ρ, B, K)
        n_assign = self.criterion.assigned_clips(x.shape[1])
        if self.queue.shape[0] != n_assign and self.queue.shape[1] > 0:
            raise ValueError(f"SwaV was built for {self.queue.shape[0]} assigned clips, batch has ρ={x.shape[1]}")
        queue_scores = None
        if self._use_queue:
            with torch.no_grad():
                queue_scores = self.prototypes(self.queue)  # (ρ_assign, L, K)
        loss = self.criterion(scores, queue_scores)
        if self.queue.shape[1] > 0:
            self._enqueue(z[:n_assign].detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        """Newest first, as SwAV: shift the queue by B and write ``z`` (ρ_assign, B, D) at the front."""
        b, size = z.shape[1], self.queue.shape[1]
        b_kept = min(b, size)
        self.queue.copy_(torch.cat([z[:, :b_kept], self.queue[:, : size - b_kept]], dim=1))
        self.queue_count.add_(b)
