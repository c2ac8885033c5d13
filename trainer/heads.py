"""Projection / prediction heads described as block lists (lightly's ``ProjectionHead`` style).

A block is ``(in_dim, out_dim, norm, activation)``: ``Linear(in, out, bias=norm is None)``, then
the norm layer, then the activation. Each named head only fixes that list and quotes the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Block = tuple[int, int, nn.Module | None, nn.Module | None]


class ProjectionHead(nn.Module):
    """A stack of ``Linear [+ norm] [+ activation]`` blocks. Input ``(N, in)`` → ``(N, out)``."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("a head needs at least one block")
        layers: list[nn.Module] = []
        for in_dim, out_dim, norm, activation in blocks:
            if in_dim <= 0 or out_dim <= 0:
                raise ValueError(f"block dims must be positive, got ({in_dim}, {out_dim})")
            layers.append(nn.Linear(in_dim, out_dim, bias=norm is None))
            if norm is not None:
                layers.append(norm)
            if activation is not None:
                layers.append(activation)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def mlp_blocks(input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, batch_norm: bool) -> list[Block]:
    """PySlowFast ``MLPHead``: ``num_layers`` Linear layers; all but the last are followed by
    [BN] + ReLU; the last one is a plain Linear (with bias) to ``output_dim``."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    blocks: list[Block] = []
    dim = input_dim
    for _ in range(num_layers - 1):
        blocks.append((dim, hidden_dim, nn.BatchNorm1d(hidden_dim) if batch_norm else None, nn.ReLU(inplace=True)))
        dim = hidden_dim
    blocks.append((dim, output_dim, None, None))
    return blocks


class MoCoProjectionHead(ProjectionHead):
    """ρMoCo: "3-layer MLP 2048-2048-2048-128, no BN" (paper-spec §3; MLP-BN hurts MoCo [P §A.3])."""

    def __init__(self, input_dim: int = 2048, hidden_dim: int = 2048, output_dim: int = 128, num_layers: int = 3):
        super().__init__(mlp_blocks(input_dim, hidden_dim, output_dim, num_layers, batch_norm=False))


class BYOLProjectionHead(ProjectionHead):
    """ρBYOL projector: "2048→4096 (SyncBN) ReLU →256" (paper-spec §3)."""

    def __init__(self, input_dim: int = 2048, hidden_dim: int = 4096, output_dim: int = 256):
        super().__init__(mlp_blocks(input_dim, hidden_dim, output_dim, 2, batch_norm=True))


class BYOLPredictionHead(ProjectionHead):
    """ρBYOL predictor (``PREDICTOR_DEPTHS: [2]``): "256→4096 BN ReLU →256" (paper-spec §3)."""

    def __init__(self, input_dim: int = 256, hidden_dim: int = 4096, output_dim: int = 256):
        super().__init__(mlp_blocks(input_dim, hidden_dim, output_dim, 2, batch_norm=True))


class SimCLRProjectionHead(ProjectionHead):
    """ρSimCLR: 3 layers, 2048 hidden → 128. The paper uses MLP-BN; PySlowFast's config has none
    (``batch_norm=False`` reproduces the code)."""

    def __init__(
        self, input_dim: int = 2048, hidden_dim: int = 2048, output_dim: int = 128, num_layers: int = 3,
        batch_norm: bool = True,
    ):
        super().__init__(mlp_blocks(input_dim, hidden_dim, output_dim, num_layers, batch_norm=batch_norm))


class SwaVProjectionHead(ProjectionHead):
    """ρSwAV: "3 layers, 2048 hidden, SyncBN → 128" (the paper uses 3 layers instead of SwAV's 2)."""

    def __init__(self, input_dim: int = 2048, hidden_dim: int = 2048, output_dim: int = 128, num_layers: int = 3):
        super().__init__(mlp_blocks(input_dim, hidden_dim, output_dim, num_layers, batch_norm=True))


class SwaVPrototypes(nn.Module):
    """``Linear(dim → num_prototypes, no bias)`` whose rows are L2-normalised before every step
    (:meth:`normalize_`). Input ``(N, dim)`` L2-normalised embeddings → scores ``(N, K)`` in [-1, 1]."""

    def __init__(self, input_dim: int = 128, num_prototypes: int = 1000):
        super().__init__()
        if num_prototypes < 2:
            raise ValueError(f"num_prototypes must be >= 2, got {num_prototypes}")
        self.layer = nn.Linear(input_dim, num_prototypes, bias=False)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere (SwAV does this each iteration)."""
        self.layer.weight.copy_(nn.functional.normalize(self.layer.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)
