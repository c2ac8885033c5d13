"""The interface every objective implements (a small ``nn.Module`` the loop drives)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def per_clip(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` on each clip index separately: ``(B, ρ, C, T, H, W)`` → ``(ρ, B, D)``.

    One forward per clip index keeps BN batches at B clips (one clip per video), as PySlowFast's
    per-clip forwards do, so BN statistics never mix a video's clips.
    """
    return torch.stack([module(x[:, i]) for i in range(x.shape[1])])  # (ρ, B, D)


def reduce_over_queries(per_query: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-query losses ``(ρ,)`` → scalar: 'mean' (the paper: averaged over the ρ queries) or
    'sum' (PySlowFast: each clip's loss is backpropagated separately, so gradients add up)."""
    if reduction == "mean":
        return per_query.mean()
    if reduction == "sum":
        return per_query.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def check_reduction(reduction: str) -> str:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' (paper) or 'sum' (PySlowFast), got {reduction!r}")
    return reduction


def check_temperature(temperature: float) -> float:
    if not temperature > 1e-8:
        raise ValueError(f"temperature must be > 1e-8 (the paper uses 0.1), got {temperature}")
    return temperature


def check_clips(x: torch.Tensor) -> None:
    if x.dim() != 6:
        raise ValueError(f"expected normalised clips (B, ρ, C, T, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"the objectives need ρ >= 2 clips per video, got ρ={x.shape[1]}")


class Objective(nn.Module):
    """A backbone plus heads (and momentum copies, queues, prototypes as submodules/buffers).

    The loop calls, per step: ``on_step_start(step, max_steps)`` (momentum update, prototype
    normalisation; returns scalars to log), ``loss = model(x)`` with ``x`` normalised clips
    ``(B, ρ, C, T, H, W)``, ``loss.backward()``, ``on_after_backward(step)``, optimizer step.
    All state (momentum encoder, queues, prototypes) lives in ``state_dict()``.
    """

    backbone: nn.Module

    def on_step_start(self, step: int, max_steps: int) -> dict[str, float]:
        return {}

    def on_after_backward(self, step: int) -> None:
        return None

    @torch.no_grad()
    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """Frozen backbone features for evaluation: ``(N, C, T, H, W)`` → ``(N, F)``."""
        return self.backbone(clips)
