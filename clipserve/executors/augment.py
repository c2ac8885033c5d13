"""CPU augmentation of one clip: crop box → (C, T, S, S) uint8, one parameter draw for all T frames.

Semantics (paper-spec §2, PySlowFast "aug+"): colour jitter (brightness, contrast, saturation, hue
in the drawn order, torchvision ``ColorJitter`` semantics), grayscale, Gaussian blur, then
random-resized-crop to S×S and horizontal flip. One draw (``AugmentParams``) per clip, shared by
all T frames, independent across the ρ clips.

Where each step runs (``augment_clip``, the fast path, OpenCV on uint8):

1. **Resize** the crop box ``(T, h, w, 3)`` to ``S×S``: bilinear, half-pixel centres
   (``align_corners=False``), no antialiasing (as PySlowFast's ``interpolate``; ``cv2.INTER_LINEAR``).
2. **Colour jitter** in ``params.color_jitter.order`` on the resized pixels (pointwise ops commute
   with cropping and resizing up to rounding, and there are fewer pixels after the crop). Each op
   clamps to [0, 255]; runs of the affine ops (brightness, contrast, saturation, grayscale) are
   composed into one matrix and rounded to uint8 once (see ``_colour``):
   brightness ``f·x``; contrast ``f·x + (1−f)·m`` with ``m`` the mean gray level (ITU-R 601-2 luma
   0.299/0.587/0.114) **of the whole clip** (all T frames of the crop box, as PySlowFast which
   jitters the clip as one image; the paper's mean is over full frames, ours over the crop box);
   saturation ``f·x + (1−f)·gray(x)``; hue: rotate H in HSV by ``hue_shift_turns`` turns.
3. **Grayscale**: ``gray(x)`` copied to the 3 channels.
4. **Gaussian blur** per frame, on the resized pixels (separable, ``cv2.sepFilter2D`` with
   torchvision's kernel; a grayscale clip is blurred as one channel). σ is drawn in *source* pixels
   (``blur_sigma_source_pixels``, as PySlowFast blurs the decoded frame before cropping); here it is
   converted to output pixels per axis: ``σx = σ·S/w``, ``σy = σ·S/h`` (w, h: crop box width and
   height in source pixels; equal when the box is square). Kernel radius ``ceil(3σ)`` per axis
   (capped at S−1), border ``reflect-101`` (torch ``reflect``).
5. **Horizontal flip** of every frame when ``params.flip``.

``reference_augment_clip`` is a slow, obviously-correct float32 implementation with
torchvision.transforms.v2 functional ops (rounding once at the end); with ``blur_at_source=True``
it follows the paper's literal order (all colour ops and the blur at source resolution, then
resize). Parity contract for every executor (this fast path, DALI, ...): for the same region and
params, the mean absolute difference to ``reference_augment_clip(region, params)`` is at most
``AUGMENT_PARITY_TOLERANCE`` (in 0..255 units) and the maximum absolute difference at most
``AUGMENT_PARITY_MAX_ABS_TOLERANCE``, except that hue shifts of nearly achromatic pixels may differ
more at isolated pixels (see ``AUGMENT_PARITY_MAX_ABS_TOLERANCE``).
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from clipserve.plan_models import AugmentParams, ColorJitterParams

AUGMENT_PARITY_TOLERANCE: float = 1.0
"""Largest allowed mean absolute difference (0..255 units, over all C·T·S·S values) between an
executor's augmented clip and ``reference_augment_clip`` for the same region and params."""

AUGMENT_PARITY_MAX_ABS_TOLERANCE: int = 12
"""Largest allowed absolute difference (0..255 units) at any single value. Uint8 rounding after each
op accumulates to a few levels; a hue shift amplifies rounding of nearly gray pixels (an 8-bit
round-off can move their hue a lot), hence the margin."""

GRAY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""RGB → gray weights (ITU-R 601-2 luma), as torchvision and OpenCV."""

_augment_seconds_total = 0.0


def augment_seconds_total() -> float:
    """Seconds this process has spent inside ``augment_clip`` (a monotonic counter for timing stats)."""
    return _augment_seconds_total


def output_blur_sigma_pixels(params: AugmentParams, region_height_pixels: int, region_width_pixels: int) -> tuple[float, float] | None:
    """Blur σ converted to output pixels, ``(σx, σy)``; None when the clip is not blurred.

    ``σx = σ_source · S / region_width``, ``σy = σ_source · S / region_height``.
    """
    sigma = params.blur_sigma_source_pixels
    if sigma is None or sigma <= 0:
        return None
    s = params.output_size_pixels
    return sigma * s / region_width_pixels, sigma * s / region_height_pixels


def blur_kernel_size_pixels(sigma_pixels: float, image_size_pixels: int) -> int:
    """Odd kernel size ``2·ceil(3σ)+1`` for a σ in output pixels, capped so the radius is < the image size."""
    radius = min(max(1, math.ceil(3.0 * sigma_pixels)), max(1, image_size_pixels - 1))
    return 2 * radius + 1


def _check_region(region: np.ndarray, params: AugmentParams) -> None:
    if not isinstance(region, np.ndarray) or region.dtype != np.uint8 or region.ndim != 4 or region.shape[3] != 3:
        shape = getattr(region, "shape", None)
        dtype = getattr(region, "dtype", type(region).__name__)
        raise ValueError(f"region must be a (T, h, w, 3) uint8 array, got shape {shape} dtype {dtype}")
    if min(region.shape[:3]) < 1:
        raise ValueError(f"region must be non-empty, got shape {region.shape}")
    if params.output_size_pixels < 1:
        raise ValueError(f"output_size_pixels ({params.output_size_pixels}) must be >= 1")


# --------------------------------------------------------------------------------------------
# Fast path: OpenCV on uint8, the clip as one tall (T·S, S, 3) image for pointwise ops.
#
# Brightness, contrast, saturation and grayscale are affine maps of RGB (``x → A·x + b``), so a
# run of them is composed into one 3×4 matrix and applied in one ``cv2.transform`` pass (float
# arithmetic, one rounding to uint8). The reference clamps to [0, 255] after every op; an op only
# leaves that range when its factor is > 1 (factor ≤ 1 is a convex blend of in-range values), so
# the composed matrix is applied (with uint8 saturation = the clamp) right after such an op, before
# a hue shift (not affine) and at the end. Contrast needs the gray mean of the image at that point:
# means are linear, so it is ``w · (A·μ + b)`` with μ the per-channel mean of the last applied image.


_GRAY_ROW = np.array(GRAY_WEIGHTS, dtype=np.float64)


def _gray_matrix(saturation_factor: float) -> np.ndarray:
    """3×3 colour matrix of ``f·x + (1−f)·gray(x)`` (f = 0: grayscale)."""
    return saturation_factor * np.eye(3) + (1.0 - saturation_factor) * np.outer(np.ones(3), _GRAY_ROW)


def _hue(img: np.ndarray, shift_turns: float) -> np.ndarray:
    if shift_turns == 0.0:
        return img
    # Float HSV without rescaling: H in degrees [0, 360), S in [0, 1], V in 0..255. OpenCV's
    # HSV→RGB wraps hues in [0, 720) correctly (not negative ones), so add the shift mod 360.
    hsv = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2HSV)
    cv2.add(hsv, ((shift_turns % 1.0) * 360.0, 0.0, 0.0, 0.0), dst=hsv)
    return cv2.convertScaleAbs(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))  # rounds, saturates to uint8


class _Affine:
    """A pending composition ``x → A·x + b`` (float64) on top of the last applied uint8 image."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.matrix = np.eye(3)
        self.offset = np.zeros(3)
        self.pending = False
        self._means: np.ndarray | None = None

    def then(self, matrix: np.ndarray, offset: np.ndarray | float = 0.0) -> None:
        self.matrix = matrix @ self.matrix
        self.offset = matrix @ self.offset + offset
        self.pending = True

    def gray_mean(self) -> float:
        if self._means is None:
            self._means = np.array(cv2.mean(self.img)[:3])
        return float(_GRAY_ROW @ (self.matrix @ self._means + self.offset))

    def apply(self, rows: int = 3) -> np.ndarray:
        """Apply the pending map (clamped and rounded to uint8); ``rows=1``: one gray channel."""
        if self.pending or rows == 1:
            m = np.hstack([self.matrix, self.offset[:, None]])[:rows].astype(np.float32)
            self.img = cv2.transform(self.img, m)  # float arithmetic, rounded and saturated to uint8
            self.matrix, self.offset, self.pending, self._means = np.eye(3), np.zeros(3), False, None
        return self.img


def _colour(tall: np.ndarray, jitter: ColorJitterParams | None, grayscale: bool) -> np.ndarray:
    """Colour jitter (in ``jitter.order``) and grayscale on the clip as one tall image ``(T·S, S, 3)``
    uint8 → ``(T·S, S, 3)`` uint8, or ``(T·S, S)`` uint8 gray when ``grayscale``."""
    state = _Affine(tall)
    for op in jitter.order if jitter is not None else []:
        if op == "brightness":
            factor = jitter.brightness_factor
            state.then(np.eye(3) * factor)
        elif op == "contrast":
            factor = jitter.contrast_factor
            state.then(np.eye(3) * factor, (1.0 - factor) * state.gray_mean())
        elif op == "saturation":
            factor = jitter.saturation_factor
            state.then(_gray_matrix(factor))
        else:  # hue: not affine
            if jitter.hue_shift_turns != 0.0:
                state.img = _hue(state.apply(), jitter.hue_shift_turns)
            continue
        if factor > 1.0:  # may leave [0, 255]: clamp now, as the reference does after each op
            state.apply()
    if grayscale:
        state.then(_gray_matrix(0.0))
        return state.apply(rows=1)
    return state.apply()


def _gaussian_kernel(sigma_pixels: float, size_pixels: int) -> np.ndarray:
    """1-D Gaussian kernel (size ``size_pixels``, float32, sums to 1) as torchvision's."""
    return cv2.getGaussianKernel(size_pixels, sigma_pixels, cv2.CV_32F)


def augment_clip(region: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Augment one clip: ``region`` ``(T, h, w, 3)`` uint8 RGB, the clip's crop box of the upright
    frames (h = crop height, w = crop width, in source pixels) → ``(C, T, S, S)`` uint8 with
    ``S = params.output_size_pixels``. Same parameters for all T frames. See the module docstring
    for the order of operations and where the blur runs.

    Raises:
        ValueError: ``region`` is not a non-empty ``(T, h, w, 3)`` uint8 array.
    """
    global _augment_seconds_total
    started = time.perf_counter()
    _check_region(region, params)
    t, h, w, _ = region.shape
    s = params.output_size_pixels
    frames = np.empty((t, s, s, 3), dtype=np.uint8)
    for i in range(t):
        src = region[i]
        if src.strides[1] != 3 or src.strides[2] != 1:
            src = np.ascontiguousarray(src)
        if h == s and w == s:
            frames[i] = src
        else:
            cv2.resize(src, (s, s), dst=frames[i], interpolation=cv2.INTER_LINEAR)
    tall = frames.reshape(t * s, s, 3)  # pointwise ops: the clip as one tall image
    if params.color_jitter is not None or params.grayscale:
        tall = _colour(tall, params.color_jitter, params.grayscale)
    channels = 1 if tall.ndim == 2 else 3
    frames = tall.reshape((t, s, s) if channels == 1 else (t, s, s, 3))
    sigmas = output_blur_sigma_pixels(params, h, w)
    if sigmas is not None:
        sx, sy = sigmas
        kernel_x = _gaussian_kernel(sx, blur_kernel_size_pixels(sx, s))
        kernel_y = _gaussian_kernel(sy, blur_kernel_size_pixels(sy, s))
        for i in range(t):
            cv2.sepFilter2D(frames[i], -1, kernel_x, kernel_y, dst=frames[i], borderType=cv2.BORDER_REFLECT_101)
    if channels == 1:
        out = np.empty((3, t, s, s), dtype=np.uint8)
        out[:] = frames[None, :, :, ::-1] if params.flip else frames[None]
    else:
        planar = frames.transpose(3, 0, 1, 2)  # (C, T, S, S) view
        if params.flip:
            planar = planar[..., ::-1]
        out = np.ascontiguousarray(planar)
    _augment_seconds_total += time.perf_counter() - started
    return out


# --------------------------------------------------------------------------------------------
# Reference: torchvision.transforms.v2 functional ops on float32 in [0, 1], rounded once at the end.


def reference_augment_clip(region: np.ndarray, params: AugmentParams, *, blur_at_source: bool = False) -> np.ndarray:
    """Slow, obviously-correct implementation of the same semantics (torchvision v2, float32).

    The clip is jittered as one image ``(C, T·S, S)`` (clip-wide contrast mean, as PySlowFast).
    ``blur_at_source=False``: resize first, then colour ops, grayscale and the blur with σ converted
    to output pixels (the contract ``augment_clip`` implements). ``blur_at_source=True``: the paper's
    literal order: colour ops, grayscale and the blur (σ in source pixels) on the crop box, then resize.
    Returns ``(C, T, S, S)`` uint8.
    """
    import torch
    from torchvision.transforms.v2 import functional as F

    _check_region(region, params)
    t, h, w, _ = region.shape
    s = params.output_size_pixels
    x = torch.from_numpy(np.ascontiguousarray(region)).permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (T, C, h, w)

    def resize(v: torch.Tensor) -> torch.Tensor:
        return F.resize(v, [s, s], interpolation=F.InterpolationMode.BILINEAR, antialias=False).clamp(0.0, 1.0)

    def colour(v: torch.Tensor) -> torch.Tensor:
        tt, c, hh, ww = v.shape
        tall = v.permute(1, 0, 2, 3).reshape(c, tt * hh, ww)  # (C, T·H, W): one image
        jitter = params.color_jitter
        if jitter is not None:
            for op in jitter.order:
                if op == "brightness":
                    tall = F.adjust_brightness(tall, jitter.brightness_factor)
                elif op == "contrast":
                    tall = F.adjust_contrast(tall, jitter.contrast_factor)
                elif op == "saturation":
                    tall = F.adjust_saturation(tall, jitter.saturation_factor)
                elif op == "hue":
                    tall = F.adjust_hue(tall, jitter.hue_shift_turns)
        if params.grayscale:
            tall = F.rgb_to_grayscale(tall, num_output_channels=3)
        return tall.reshape(c, tt, hh, ww).permute(1, 0, 2, 3)

    def blur(v: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
        kx = blur_kernel_size_pixels(sx, v.shape[-1])
        ky = blur_kernel_size_pixels(sy, v.shape[-2])
        return F.gaussian_blur(v, [kx, ky], [sx, sy])

    sigma = params.blur_sigma_source_pixels
    if blur_at_source:
        x = colour(x)
        if sigma is not None and sigma > 0:
            x = blur(x, sigma, sigma)
        x = resize(x)
    else:
        x = colour(resize(x))
        sigmas = output_blur_sigma_pixels(params, h, w)
        if sigmas is not None:
            x = blur(x, *sigmas)
    if params.flip:
        x = F.horizontal_flip(x)
    out = (x * 255.0).round().clamp(0, 255).to(torch.uint8)  # (T, C, S, S)
    return out.permute(1, 0, 2, 3).contiguous().numpy()
