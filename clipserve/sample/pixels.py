"""Pixel helpers shared by the sample renderers: exact cosines and yuv420p packing (BT.601)."""

from __future__ import annotations

import math

import numpy as np

_COS_TABLE = np.array([math.cos(2 * math.pi * k / 1024) for k in range(1024)])
"""cos over one turn in 1024 steps: looked up instead of ``np.cos``, whose SIMD and scalar paths
may differ in the last bit; with only +, -, *, / and floor on float64 every pixel is bit-exact on
every run (so a seed always gives the same encoded bytes)."""



def soft_waves(xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator, max_cycles: float, count: int = 3) -> np.ndarray:
    """(H, W) float64 sum of ``count`` plane cosine waves, each of random direction and phase with at most
    ``max_cycles`` turns across the unit frame coordinates ``xs`` (1, W) and ``ys`` (H, 1); values in
    [-count, count]. Draws 3 numbers per wave from ``rng`` (fx, fy, phase), in that order."""
    waves = np.zeros((ys.shape[0], xs.shape[1]))
    for _ in range(count):
        fx, fy = rng.uniform(-max_cycles, max_cycles, size=2)
        turns = fx * xs + fy * ys + rng.uniform(0, 1)
        waves += _COS_TABLE[((turns - np.floor(turns)) * 1024).astype(np.int64) & 1023]
    return waves

def _rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> packed (H * 3 // 2, W) uint8 yuv420p, BT.601 limited range (what
    FFmpeg assumes for untagged video), chroma = mean of each 2×2 block. Integer arithmetic, so
    bit-exact everywhere."""
    height, width = rgb.shape[:2]
    c = rgb.astype(np.int32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    r2, g2, b2 = (ch.reshape(height // 2, 2, width // 2, 2).sum(axis=(1, 3)) for ch in (r, g, b))  # 4 × mean
    u = ((-38 * r2 - 74 * g2 + 112 * b2 + 512) >> 10) + 128
    v = ((112 * r2 - 94 * g2 - 18 * b2 + 512) >> 10) + 128
    return np.concatenate([y.ravel(), u.ravel(), v.ravel()]).astype(np.uint8).reshape(height * 3 // 2, width)


def _planes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (Y (H, W), U (H/2, W/2), V (H/2, W/2)) into a packed (H * 3 // 2, W) yuv420p frame."""
    height, width = frame.shape[0] * 2 // 3, frame.shape[1]
    chroma = frame[height:].reshape(2, height // 2, width // 2)
    return frame[:height], chroma[0], chroma[1]


def yuv420p_to_rgb(frame: np.ndarray) -> np.ndarray:
    """Packed (H * 3 // 2, W) yuv420p (BT.601 limited range) -> (H, W, 3) uint8 RGB, chroma
    upsampled by repetition. For looking at and testing rendered frames; not used to encode."""
    y, u, v = _planes(frame)
    yf = (y.astype(np.float32) - 16.0) * 1.164
    uf = np.repeat(np.repeat(u.astype(np.float32) - 128.0, 2, axis=0), 2, axis=1)
    vf = np.repeat(np.repeat(v.astype(np.float32) - 128.0, 2, axis=0), 2, axis=1)
    rgb = np.stack([yf + 1.596 * vf, yf - 0.392 * uf - 0.813 * vf, yf + 2.017 * uf], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
