"""Video backbones: clips ``(N, C, T, H, W)`` float → pooled features ``(N, feature_dim)``.

- ``tiny``: a 3-layer 3D CNN for tests and CPU demos (64-d features).
- ``r3d_18``, ``r2plus1d_18``, ``mvit_v2_s``: torchvision's video models, random init (no
  downloads), classifier replaced by identity (512 / 512 / 768-d).
- ``slow_r50``: Slow-only R-50 8×8 (the paper's backbone; 2048-d) from torchvision's video ResNet
  parts: temporal kernel 1 in conv1/res2/res3 and 3 in res4/res5 (in each bottleneck's first
  1×1 conv, as SlowFast's Table 1: [3×1², 1×3², 1×1²]), no temporal downsampling anywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import BACKBONES

# torchvision is imported inside the builders that need it: the tiny backbone (tests, CPU demos,
# every torchrun rank) then starts without paying for it.

__all__ = ["BACKBONES", "MViTV2S", "SlowR50", "SlowStem", "TinyVideoCNN", "build_backbone"]


class TinyVideoCNN(nn.Module):
    """Three Conv3d-BN-ReLU layers and a global average pool; about 70k parameters.

    Input ``(N, 3, T, H, W)`` → ``(N, width * 4)``. Spatial stride 8 overall, temporal stride 2.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.feature_dim = width * 4
        self.layers = nn.Sequential(
            nn.Conv3d(3, width, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),  # (N, w, T, H/2, W/2)
            nn.Conv3d(width, width * 2, kernel_size=3, stride=(1, 2, 2), padding=1, bias=False),
            nn.BatchNorm3d(width * 2),
            nn.ReLU(inplace=True),  # (N, 2w, T, H/4, W/4)
            nn.Conv3d(width * 2, width * 4, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(width * 4),
            nn.ReLU(inplace=True),  # (N, 4w, T/2, H/8, W/8)
        )
        self.pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)  # (N, 4w, T', H', W')
        return self.pool(x).flatten(1)  # (N, 4w)


class SlowStem(nn.Sequential):
    """Slow pathway stem: conv 1×7×7 stride (1, 2, 2), BN, ReLU, max-pool 1×3×3 stride (1, 2, 2)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv3d(3, 64, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )


class SlowR50(nn.Module):
    """Slow-only ResNet-50 (8×8 when fed T=8 frames sampled at stride 8).

    Stages res2..res5 have [3, 4, 6, 3] torchvision ``Bottleneck`` blocks whose 3×3 conv is
    ``Conv3DNoTemporal`` (1×3×3, spatial stride only). In res4 and res5 the first 1×1 conv of each
    block becomes 3×1×1 (padding 1 in time). Input ``(N, 3, T, H, W)`` → ``(N, 2048)``; the temporal
    size stays T until the global average pool.
    """

    feature_dim = 2048
    temporal_kernels = (1, 1, 1, 3, 3)  # conv1, res2, res3, res4, res5

    def __init__(self) -> None:
        super().__init__()
        self.stem = SlowStem()  # (N, 64, T, H/4, W/4)
        self.inplanes = 64
        stages = []
        for planes, blocks, stride, t_kernel in zip((64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2), self.temporal_kernels[1:]):
            stages.append(self._make_stage(planes, blocks, stride, t_kernel))
        self.res2, self.res3, self.res4, self.res5 = stages  # res5: (N, 2048, T, H/32, W/32)
        self.pool = nn.AdaptiveAvgPool3d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_stage(self, planes: int, blocks: int, stride: int, temporal_kernel: int) -> nn.Sequential:
        from torchvision.models.video.resnet import Bottleneck, Conv3DNoTemporal

        out_planes = planes * Bottleneck.expansion  # 4
        layers = []
        for i in range(blocks):
            downsample = None
            block_stride = stride if i == 0 else 1
            if i == 0 and (stride != 1 or self.inplanes != out_planes):
                downsample = nn.Sequential(
                    nn.Conv3d(self.inplanes, out_planes, kernel_size=1, stride=(1, stride, stride), bias=False),
                    nn.BatchNorm3d(out_planes),
                )
            block = Bottleneck(self.inplanes, planes, Conv3DNoTemporal, block_stride, downsample)
            if temporal_kernel > 1:
                block.conv1[0] = nn.Conv3d(
                    self.inplanes, planes, kernel_size=(temporal_kernel, 1, 1),
                    padding=(temporal_kernel // 2, 0, 0), bias=False,
                )
            layers.append(block)
            self.inplanes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, 64, T, H/4, W/4)
        x = self.res2(x)  # (N, 256, T, H/4, W/4)
        x = self.res3(x)  # (N, 512, T, H/8, W/8)
        x = self.res4(x)  # (N, 1024, T, H/16, W/16)
        x = self.res5(x)  # (N, 2048, T, H/32, W/32)
        return self.pool(x).flatten(1)  # (N, 2048)


class MViTV2S(nn.Module):
    """torchvision ``mvit_v2_s`` without its classifier: ``(N, 3, 16, 224, 224)`` → ``(N, 768)``.

    torchvision fixes its positional embeddings to T=16 frames of 224×224, so other clip shapes are
    rejected with a clear error (serve T=16, crop 224 for this backbone).
    """

    input_shape = (16, 224, 224)  # (T, H, W)

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.video import mvit_v2_s

        self.model = mvit_v2_s(weights=None)
        self.model.head = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(
                f"mvit_v2_s needs clips (N, 3, 16, 224, 224), got {tuple(x.shape)}; "
                "serve frames_per_clip=16 and crop_size_pixels=224, or pick another backbone"
            )
        return self.model(x)  # (N, 768)


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """Backbone ``name`` (one of :data:`BACKBONES`) and its feature dimension."""
    if name == "tiny":
        m = TinyVideoCNN()
        return m, m.feature_dim
    if name == "slow_r50":
        return SlowR50(), SlowR50.feature_dim
    if name in ("r3d_18", "r2plus1d_18"):
        from torchvision.models import video as tv_video

        m = getattr(tv_video, name)(weights=None)
        dim = m.fc.in_features
        m.fc = nn.Identity()
        return m, dim
    if name == "mvit_v2_s":
        return MViTV2S(), 768
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
