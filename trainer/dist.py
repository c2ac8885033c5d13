"""torch.distributed helpers: rank, world size, gather with gradient, sums, CPU-capable SyncBN.

Every helper degrades to the single-process behaviour when torch.distributed is not initialised,
so the same code runs as ``python -m trainer`` and under ``torchrun``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """True when a process group is initialised (torchrun, or a test's gloo group)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without torch.distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without torch.distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the only process that logs and saves."""
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        all_grads = torch.stack(grads)  # (W, *x.shape)
        dist.all_reduce(all_grads)
        return all_grads[dist.get_rank()]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (each rank's output feeds every rank's loss)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather(x: torch.Tensor) -> list[torch.Tensor]:
    """Tensors from all ranks (rank order), differentiable: gradients flow back to their owners.

    With a per-rank loss L_r, the gradient each rank receives for its own ``x`` is
    ``sum_r dL_r/dx``; after DDP's gradient averaging this is the gradient of ``mean_r L_r``.
    """
    if not is_distributed() or world_size() == 1:
        return [x]
    return list(_GatherWithGrad.apply(x))


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (no gradient)."""
    if not is_distributed() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def gather_objects(value: object) -> list[object]:
    """``value`` from every rank, in rank order (picklable objects; ``[value]`` in a single process)."""
    if not is_distributed() or world_size() == 1:
        return [value]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process); returns ``x``."""
    if is_distributed() and world_size() > 1:
        dist.all_reduce(x)
    return x


class AllReduceBatchNorm(nn.BatchNorm1d):
    """Batch norm whose statistics are summed over all ranks, with gradient (works with gloo/CPU).

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this module computes the same thing with two
    differentiable all_reduces (sum and sum of squares per channel), so the output equals plain
    BN on the concatenated global batch. Any input ``(N, C, *)`` is accepted (1-D/2-D/3-D BN).
    Running statistics use the unbiased global variance, as BN does.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, *), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training or not is_distributed() or world_size() == 1:
            return nn.modules.batchnorm._BatchNorm.forward(self, x)
        reduce_dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(reduce_dims), (x * x).sum(reduce_dims), count])  # (2C + 1,)
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = stats[c : 2 * c] / total - mean * mean  # biased global variance, (C,)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * total / max(total.item() - 1.0, 1.0)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d: by ``nn.SyncBatchNorm`` on CUDA, ``AllReduceBatchNorm`` otherwise."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_all_reduce_bn(module)


def _convert_all_reduce_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        out = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:  # the same Parameter objects: requires_grad (frozen momentum encoders) is kept
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_all_reduce_bn(child))
    return out


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: ``rank``/``world_size`` (global), ``local_rank`` and its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_from_env(device: str = "auto") -> DistributedContext:
    """Initialise torch.distributed when launched by torchrun (``RANK`` in the environment).

    Backend: NCCL when the device is CUDA, gloo otherwise. ``device`` is 'auto' (CUDA if available,
    else CPU), 'cpu' or 'cuda'. Without ``RANK`` this is a single process on ``device``.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; pass --device cpu")
    if "RANK" in os.environ and not is_distributed():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistributedContext(rank=rank(), world_size=world_size(), local_rank=local_rank, device=dev)


def destroy() -> None:
    """Tear down the process group if one is up (end of a torchrun run)."""
    if is_distributed():
        dist.destroy_process_group()
