"""Small free functions shared by the objectives and the loop (lightly style)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

CLIP_MEAN = 0.45
"""Per-channel mean of the [0, 1] pixel values subtracted before the backbone (all channels)."""
CLIP_STD = 0.225
"""Per-channel standard deviation the centred [0, 1] pixel values are divided by."""


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """Exponential moving average: ``ema = m * ema + (1 - m) * online`` for every parameter.

    Buffers (BN running statistics) are not averaged; the momentum encoder keeps its own.
    ``m`` is in [0, 1]: 1 freezes the momentum encoder, 0 copies the online weights.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    for p_ema, p in zip(model_ema.parameters(), model.parameters(), strict=True):
        p_ema.mul_(m).add_(p.detach(), alpha=1.0 - m)


def deactivate_requires_grad(model: nn.Module) -> nn.Module:
    """Freeze every parameter of ``model`` (used for momentum encoders); returns the model."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def cosine_schedule(step: int, max_steps: int, start_value: float, end_value: float) -> float:
    """Half-cosine from ``start_value`` (step 0) to ``end_value`` (step ``max_steps``).

    PySlowFast's annealed momentum: ``m = 1 - (1 - m0) * (cos(pi * step / max_steps) + 1) / 2``
    is ``cosine_schedule(step, max_steps, m0, 1.0)``. Steps past ``max_steps`` return ``end_value``.
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    progress = min(step, max_steps) / max_steps
    return end_value + (start_value - end_value) * (math.cos(math.pi * progress) + 1.0) / 2.0


def linear_scaling_factor(batch_size: int, reference_batch_size: int) -> float:
    """The linear scaling rule's factor for learning rates: ``batch_size / reference_batch_size``
    (videos a step); a reference of 0 turns scaling off (1.0)."""
    return batch_size / reference_batch_size if reference_batch_size > 0 else 1.0


def linear_warmup_lr(step: int, warmup_steps: int, warmup_start_lr: float, base_lr: float) -> float:
    """The learning rate at ``step`` < ``warmup_steps``: linear from ``warmup_start_lr`` (step 0) towards ``base_lr``."""
    return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps


def warmup_cosine_lr(
    step: int, max_steps: int, *, base_lr: float, warmup_steps: int, warmup_start_lr: float, final_lr: float
) -> float:
    """Learning rate at ``step``: linear warm-up from ``warmup_start_lr`` to ``base_lr`` over
    ``warmup_steps``, then a half-cosine from ``base_lr`` to ``final_lr`` at ``max_steps``
    (PySlowFast ``cosine`` policy with ``WARMUP_EPOCHS``, counted in steps here)."""
    if warmup_steps > 0 and step < warmup_steps:
        return linear_warmup_lr(step, warmup_steps, warmup_start_lr, base_lr)
    decay_steps = max(max_steps - warmup_steps, 1)
    return cosine_schedule(step - warmup_steps, decay_steps, base_lr, final_lr)


def normalize_clips(clips: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 clips ``(B, ρ, C, T, H, W)`` → float32 on ``device``: ``(x / 255 - 0.45) / 0.225``.

    The copy to ``device`` happens before the conversion (4x fewer bytes over PCIe), and the
    result is always a new tensor, so the source (e.g. a shared-memory slot) may be reused after.
    """
    if not isinstance(clips, torch.Tensor):  # e.g. a NumPy array from an in-process producer
        clips = torch.from_numpy(np.ascontiguousarray(clips))
    if clips.dtype != torch.uint8:
        raise TypeError(f"clips must be uint8 (B, ρ, C, T, H, W), got {clips.dtype}")
    if clips.dim() != 6:
        raise ValueError(f"clips must have 6 dims (B, ρ, C, T, H, W), got shape {tuple(clips.shape)}")
    x = clips.to(device, non_blocking=True).to(torch.float32)  # (B, ρ, C, T, H, W), a new tensor
    return x.div_(255.0).sub_(CLIP_MEAN).div_(CLIP_STD)


def round_to_resolution(fraction: float, num_samples: int) -> float:
    """``fraction`` (an accuracy over ``num_samples``) rounded to what that count resolves: steps of
    ``1 / num_samples`` need ``ceil(log10(num_samples)) + 1`` decimals (16 videos: 3 decimals,
    0.1875 → 0.188; 0.20000000298 from float32 → 0.2)."""
    decimals = max(2, math.ceil(math.log10(max(num_samples, 1))) + 1)
    return round(float(fraction), decimals)
