"""Optimizers: SGD (Nesterov) or LARS, with no weight decay / no LARS scaling on biases and norms."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (PySlowFast ``LARS``, ``clip=False``).

    For parameters of a group with ``lars=True``:
    ``g ← (g + wd·w) · trust · ‖w‖ / (‖g‖ + wd·‖w‖)`` (when both norms are > 0), then the
    momentum SGD update with the group's lr. Other groups get plain momentum SGD with weight decay.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, nesterov: bool = False) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"bad LARS settings lr={lr} momentum={momentum} wd={weight_decay} trust={trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        nesterov=nesterov, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            wd, mom = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd != 0:
                    g = g.add(p, alpha=wd)
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    denom = g_norm + wd * w_norm
                    ratio = torch.where((w_norm > 0) & (denom > 0), group["trust_coefficient"] * w_norm / denom, torch.ones_like(w_norm))
                    g = g * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(mom).add_(g)
                buf = state["momentum_buffer"]
                update = g.add(buf, alpha=mom) if group["nesterov"] else buf
                p.add_(update, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of Linear / Conv layers and prototypes (≥ 2-D: decayed, LARS-scaled) and
    1-D parameters (biases, BN / LayerNorm affine: no decay, no LARS scaling), as PySlowFast."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float, nesterov: bool,
                    trust_coefficient: float) -> torch.optim.Optimizer:
    """``name`` 'sgd' or 'lars' over :func:`param_groups`; the lr is set every step by the loop."""
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient, nesterov=nesterov)
    raise ValueError(f"optimizer must be 'sgd' or 'lars', got {name!r}")
