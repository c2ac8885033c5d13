"""The DALI graphs of the DALI executor, and the per-sample tensors that feed them from a ``ClipPlan``.

One sample = one video. ``clip_pipeline`` decodes the plan's ρ·T frames once
(``fn.decoders.video(frames=...)``; ``device="mixed"`` = NVDEC, ``"cpu"`` = FFmpeg for VP8/VP9/MJPEG)
and augments every clip with the plan's own parameters (no DALI random operator anywhere: the plan
is the single source of randomness). DALI operators work per sample, so the ρ clips of a video are
told apart with per-frame arguments (``fn.per_frame``) and per-clip tensors broadcast over
``(ρ, T, S, S, 3)``:

1. ``fn.warp_affine`` with one 2×3 matrix per frame (``sample_inputs``): rotation to upright, the
   clip's crop box, the bilinear resize to S×S (half-pixel centres, no antialiasing, source
   coordinates clamped at the frame border) and the horizontal flip, in one resampling. The flip is
   moved ahead of the colour ops and the blur: both commute with it exactly (pointwise ops; a
   symmetric kernel with a symmetric border). Then the per-video colour correction (``colour``: DALI
   decodes as BT.601, the stream may declare BT.709/BT.2020; identity for BT.601 streams).
2. Colour jitter in each clip's own order, in float32 on 0..255: four stages; stage k applies to
   every clip the brightness, contrast, saturation and hue operations with that clip's parameter
   for the op at position k of its order and identity parameters (factor 1, shift 0) for the other
   three, which are then exact no-ops. The result is the per-clip order exactly, for the price of
   four masked stages. Contrast uses the clip-wide mean gray level (all T frames), hue is the exact
   HSV rotation (torchvision ``adjust_hue``), each op clamps to [0, 255] as torchvision does on floats.
3. Grayscale (per-clip 0/1 blend with the ITU-R 601 luma), Gaussian blur per frame
   (``fn.gaussian_blur`` with per-frame σ in output pixels, radius ceil(3σ), reflect-101 border;
   σ ≈ 0 where the clip has no blur, an exact identity), one rounding to uint8 at the end.

Output per sample: ``(ρ, C, T, S, S)`` uint8, so a batch is ``(B, ρ, C, T, S, S)``.
"""

from __future__ import annotations


import numpy as np
from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath

from clipserve.plan_models import ClipPlan

NO_BLUR_SIGMA_PIXELS = 1e-3
"""σ (output pixels) fed to ``fn.gaussian_blur`` for clips without blur: its 3-tap kernel is (0, 1, 0)."""

JITTER_STAGES = 4
"""Brightness, contrast, saturation, hue: one masked stage per position in a clip's jitter order."""

_JITTER_OP_SLOT = {"brightness": 0, "contrast": 1, "saturation": 2, "hue": 3}
_LUMA = (0.299, 0.587, 0.114)

# Names of the external sources (the order ``sample_inputs`` returns its arrays in).
INPUT_NAMES = ("encoded", "frames", "order", "warp", "jitter", "grayscale", "blur_sigma", "colour")
DECODE_INPUT_NAMES = ("encoded", "frames", "order", "colour")

IDENTITY_COLOUR = np.hstack([np.eye(3), np.zeros((3, 1))]).astype(np.float32).reshape(3, 4, 1, 1, 1)
"""The ``colour`` input that changes nothing: DALI's own (BT.601) RGB."""


def colour_input(correction: np.ndarray | None) -> np.ndarray:
    """``(3, 4, 1, 1, 1)`` float32 ``colour`` input from a 3×4 ``[R', G', B'] = C · [R, G, B, 1]``
    (``clipserve.executors.yuv.bt601_rgb_correction``); None: the identity."""
    if correction is None:
        return IDENTITY_COLOUR
    return np.asarray(correction, dtype=np.float32).reshape(3, 4, 1, 1, 1)


def _turns(rotation_degrees: int) -> int:
    if rotation_degrees % 90:
        raise ValueError(f"rotation_degrees ({rotation_degrees}) must be a multiple of 90 (0, 90, 180 or 270)")
    return (rotation_degrees // 90) % 4


def upright_to_coded_matrix(rotation_degrees: int, coded_height_pixels: int, coded_width_pixels: int) -> np.ndarray:
    """3×3 affine map from continuous upright coordinates (x right, y down, pixel centres at +0.5)
    to coded-frame coordinates, for a video whose coded frame is turned upright by rotating it
    ``rotation_degrees`` counter-clockwise (``np.rot90(coded, k=rotation_degrees // 90)``)."""
    hc, wc = coded_height_pixels, coded_width_pixels
    turns = _turns(rotation_degrees)
    if turns == 0:
        m = [[1, 0, 0], [0, 1, 0]]
    elif turns == 1:  # upright[i, j] = coded[j, wc - 1 - i]: x_c = wc - Y, y_c = X
        m = [[0, -1, wc], [1, 0, 0]]
    elif turns == 2:  # upright[i, j] = coded[hc - 1 - i, wc - 1 - j]
        m = [[-1, 0, wc], [0, -1, hc]]
    else:  # upright[i, j] = coded[hc - 1 - j, i]: x_c = Y, y_c = hc - X
        m = [[0, 1, 0], [-1, 0, hc]]
    return np.array(m + [[0, 0, 1]], dtype=np.float64)


def clip_warp_matrix(plan: ClipPlan, clip: int) -> np.ndarray:
    """2×3 float32 matrix mapping output pixel coordinates (continuous, S×S) to coded-frame
    coordinates: crop box + resize + horizontal flip + rotation (``fn.warp_affine``, inverse map)."""
    a = plan.clips[clip].augment
    s = a.output_size_pixels
    sx, sy = a.crop_width_pixels / s, a.crop_height_pixels / s
    if a.flip:
        crop = np.array([[-sx, 0, a.crop_left_pixels + a.crop_width_pixels], [0, sy, a.crop_top_pixels], [0, 0, 1]])
    else:
        crop = np.array([[sx, 0, a.crop_left_pixels], [0, sy, a.crop_top_pixels], [0, 0, 1]])
    rotation = plan.rotation_degrees
    if rotation % 180:
        coded_h, coded_w = plan.source_width_pixels, plan.source_height_pixels
    else:
        coded_h, coded_w = plan.source_height_pixels, plan.source_width_pixels
    m = upright_to_coded_matrix(rotation, coded_h, coded_w) @ crop
    return m[:2].astype(np.float32)


def plan_shape(plan: ClipPlan) -> tuple[int, int, int]:
    """(ρ, T, S) of a plan; raises ValueError when its clips differ in T or S."""
    if not plan.clips:
        raise ValueError(f"plan for {plan.relative_path} has no clips")
    lengths = {len(c.frame_indices) for c in plan.clips}
    sizes = {c.augment.output_size_pixels for c in plan.clips}
    if len(lengths) != 1 or len(sizes) != 1:
        raise ValueError(f"plan for {plan.relative_path}: all clips need the same T and S, got T={sorted(lengths)} S={sorted(sizes)}")
    return len(plan.clips), lengths.pop(), sizes.pop()


def sample_inputs(encoded: np.ndarray, plan: ClipPlan, colour: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """The per-sample arrays of one video, in ``INPUT_NAMES`` order.

    - encoded: ``(nbytes,)`` uint8, the file's bytes;
    - frames: ``(n,)`` int32, the sorted distinct indices of ``plan.all_frame_indices`` (the decoder
      then only moves forward and decodes a frame shared by two clips once);
    - order: ``(ρ·T,)`` int32, position in ``frames`` of each of ``plan.all_frame_indices``;
    - warp: ``(ρ·T, 2, 3)`` float32, ``clip_warp_matrix`` of each frame's clip;
    - jitter: ``(4 stages, 4 ops, ρ, 1, 1, 1, 1)`` float32: brightness, contrast and saturation
      factors (identity 1) and hue shift in sextants (turns·6, identity 0), op order slot by slot;
    - grayscale: ``(ρ, 1, 1, 1, 1)`` float32 0/1;
    - blur_sigma: ``(ρ·T, 2)`` float32, (σy, σx) in output pixels;
    - colour: ``(3, 4, 1, 1, 1)`` float32, the RGB correction of ``colour_input(colour)``.
    """
    num_clips, length, size = plan_shape(plan)
    warp = np.empty((num_clips * length, 2, 3), dtype=np.float32)
    jitter = np.ones((JITTER_STAGES, 4, num_clips, 1, 1, 1, 1), dtype=np.float32)
    jitter[:, 3] = 0.0
    gray = np.zeros((num_clips, 1, 1, 1, 1), dtype=np.float32)
    sigma = np.full((num_clips * length, 2), NO_BLUR_SIGMA_PIXELS, dtype=np.float32)
    for c, clip in enumerate(plan.clips):
        a = clip.augment
        warp[c * length : (c + 1) * length] = clip_warp_matrix(plan, c)
        j = a.color_jitter
        if j is not None:
            values = {
                "brightness": j.brightness_factor,
                "contrast": j.contrast_factor,
                "saturation": j.saturation_factor,
                "hue": j.hue_shift_turns * 6.0,
            }
            for stage, op in enumerate(j.order[:JITTER_STAGES]):
                jitter[stage, _JITTER_OP_SLOT[op], c] = values[op]
        gray[c] = 1.0 if a.grayscale else 0.0
        if a.blur_sigma_source_pixels is not None and a.blur_sigma_source_pixels > 0:
            sigma_y = a.blur_sigma_source_pixels * size / a.crop_height_pixels
            sigma_x = a.blur_sigma_source_pixels * size / a.crop_width_pixels
            # the CPU path caps the kernel radius at S-1 pixels; beyond ~S/3 the blur is flat anyway
            cap = max(1.0, (size - 1) / 3.0)
            sigma[c * length : (c + 1) * length] = (min(sigma_y, cap), min(sigma_x, cap))
    frames, order = sorted_frames(plan.all_frame_indices)
    return encoded, frames, order, warp, jitter, gray, sigma, colour_input(colour)


def sorted_frames(frame_indices: "list[int] | np.ndarray") -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct indices, position of each requested index in them), both int32."""
    requested = np.asarray(frame_indices, dtype=np.int64)
    unique, order = np.unique(requested, return_inverse=True)
    return unique.astype(np.int32), order.astype(np.int32).reshape(-1)


def _gray(x):
    """Luma of a (..., 3) tensor as (...,)."""
    return x[:, :, :, :, 0] * _LUMA[0] + x[:, :, :, :, 1] * _LUMA[1] + x[:, :, :, :, 2] * _LUMA[2]


def _correct_colour(x, colour):
    """``[R', G', B'] = C · [R, G, B, 1]`` on x ``(N, H, W, 3)`` float, C = ``colour`` ``(3, 4, 1, 1, 1)``,
    clamped to [0, 255]. DALI converts YUV as BT.601 whatever the stream declares; this turns that
    RGB into the declared matrix's (exact up to the clipping of the BT.601 conversion)."""
    r, g, b = x[:, :, :, 0], x[:, :, :, 1], x[:, :, :, 2]
    channels = [colour[k, 0] * r + colour[k, 1] * g + colour[k, 2] * b + colour[k, 3] for k in range(3)]
    return dmath.clamp(fn.stack(*channels, axis=3), 0.0, 255.0)


def _wrap6(h):
    return h - dmath.floor(h * (1.0 / 6.0)) * 6.0


def _hue_shift(x, shift_sextants):
    """Exact HSV hue rotation (torchvision ``adjust_hue``) of x ``(ρ, T, S, S, 3)`` float in 0..255
    by ``shift_sextants`` ``(ρ, 1, 1, 1)`` (turns · 6); 0 is an identity up to float rounding."""
    r, g, b = x[:, :, :, :, 0], x[:, :, :, :, 1], x[:, :, :, :, 2]
    maxc = dmath.max(dmath.max(r, g), b)
    minc = dmath.min(dmath.min(r, g), b)
    delta = maxc - minc
    inv = 1.0 / dmath.max(delta, 1e-6)
    is_r = maxc == r
    is_g = (maxc == g) & (maxc != r)
    is_b = (maxc != g) & (maxc != r)
    h = is_r * ((g - b) * inv) + is_g * ((b - r) * inv + 2.0) + is_b * ((r - g) * inv + 4.0)
    h = _wrap6(h + shift_sextants)

    def channel(n: float):
        k = _wrap6(h + n)
        return maxc - delta * dmath.clamp(dmath.min(k, 4.0 - k), 0.0, 1.0)

    return fn.stack(channel(5.0), channel(3.0), channel(1.0), axis=4)


@pipeline_def(enable_conditionals=False)
def clip_pipeline(device: str, num_clips: int, frames_per_clip: int, output_size_pixels: int):
    """Decode once + per-clip augmentation; output per sample ``(ρ, C, T, S, S)`` uint8.

    ``device``: 'gpu' (decode on NVDEC, everything after it on the GPU) or 'cpu'.
    """
    s = output_size_pixels
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, no_copy=False)
    frames = fn.external_source(name="frames", dtype=types.INT32)
    order = fn.external_source(name="order", dtype=types.INT32)
    warp = fn.external_source(name="warp", dtype=types.FLOAT)
    jitter = fn.external_source(name="jitter", dtype=types.FLOAT)
    grayscale = fn.external_source(name="grayscale", dtype=types.FLOAT)
    blur_sigma = fn.external_source(name="blur_sigma", dtype=types.FLOAT)
    colour = fn.external_source(name="colour", dtype=types.FLOAT)
    decoded = fn.decoders.video(  # (ρ·T, H, W, 3); an index past the end is an error, never a padded frame
        encoded, frames=frames, device="mixed" if device == "gpu" else "cpu", pad_mode="none"
    )
    decoded = fn.sequence_rearrange(decoded, new_order=order)  # sorted distinct frames → plan order
    if device == "gpu":
        jitter, grayscale, colour = jitter.gpu(), grayscale.gpu(), colour.gpu()
    x = fn.warp_affine(
        decoded, matrix=fn.per_frame(warp), size=[s, s], interp_type=types.INTERP_LINEAR, inverse_map=True, dtype=types.FLOAT
    )  # (ρ·T, S, S, 3), float, flip included
    x = _correct_colour(x, colour)  # affine in RGB: commutes with the (convex) bilinear resampling
    x = fn.reshape(x, shape=[num_clips, frames_per_clip, s, s, 3], layout="")
    for stage in range(JITTER_STAGES):
        x = dmath.clamp(x * jitter[stage, 0], 0.0, 255.0)  # brightness
        mean = fn.expand_dims(fn.reductions.mean(_gray(x), axes=[1, 2, 3], keep_dims=True), axes=[4])
        factor = jitter[stage, 1]
        x = dmath.clamp(x * factor + mean * (1.0 - factor), 0.0, 255.0)  # contrast, clip-wide mean
        factor = jitter[stage, 2]
        x = dmath.clamp(x * factor + fn.expand_dims(_gray(x), axes=[4]) * (1.0 - factor), 0.0, 255.0)  # saturation
        x = _hue_shift(x, fn.squeeze(jitter[stage, 3], axes=[4]))
    x = x + (fn.expand_dims(_gray(x), axes=[4]) - x) * grayscale
    x = fn.reshape(x, shape=[num_clips * frames_per_clip, s, s, 3], layout="FHWC")
    x = fn.gaussian_blur(x, sigma=fn.per_frame(blur_sigma), dtype=types.FLOAT)
    x = fn.reshape(x, shape=[num_clips, frames_per_clip, s, s, 3], layout="")
    x = fn.transpose(x, perm=[0, 4, 1, 2, 3])  # (ρ, C, T, S, S)
    return fn.cast(dmath.clamp(x, 0.0, 255.0), dtype=types.UINT8)  # DALI's cast rounds to nearest


@pipeline_def(enable_conditionals=False)
def decode_pipeline(device: str):
    """Decode only: per sample ``(N, H, W, 3)`` uint8 RGB (coded orientation); inputs as
    ``sorted_frames``: the sorted distinct indices and the order to return them in, and the
    ``colour`` correction (``colour_input``)."""
    encoded = fn.external_source(name="encoded", dtype=types.UINT8)
    frames = fn.external_source(name="frames", dtype=types.INT32)
    order = fn.external_source(name="order", dtype=types.INT32)
    colour = fn.external_source(name="colour", dtype=types.FLOAT)
    decoded = fn.decoders.video(encoded, frames=frames, device="mixed" if device == "gpu" else "cpu", pad_mode="none")
    decoded = fn.sequence_rearrange(decoded, new_order=order)
    if device == "gpu":
        colour = colour.gpu()
    return fn.cast(_correct_colour(fn.cast(decoded, dtype=types.FLOAT), colour), dtype=types.UINT8)

