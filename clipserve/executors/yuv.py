"""The one RGB conversion of decoded frames, and the geometry of crops on rotated videos.

Every RGB pixel clipserve's PyAV path produces comes from ``frame_region_to_rgb`` (full frames are the
region that covers the frame), so a crop converted on its own equals, pixel for pixel, the same
crop taken from the fully converted frame:

- ``yuv420p`` frames with even width and height (nearly every H.264/VP9 video): the Y, U and V
  planes are cropped on even coordinates (whole chroma samples, plus a one-sample chroma margin for
  bilinear upsampling), converted with OpenCV and the frame's own matrix and range (below), and
  then trimmed to the exact box, so cropping before converting changes nothing; it is several times
  faster than swscale through ``VideoFrame.to_ndarray(format="rgb24")`` at 340×256.
- every other pixel format (full-range ``yuvj420p``, 4:2:2, 4:4:4, 10-bit, odd sizes, RGB codecs):
  swscale converts the whole frame to ``rgb24`` (told the same matrix and range) and the box is cut
  from that.

Colour (``frame_colour``): the YUV→RGB matrix and range are the ones the stream declares, read from
each decoded frame's ``colorspace`` and ``color_range`` tags (FFmpeg copies the stream's VUI / colour
box into every frame): BT.709, BT.601 (BT.470BG / SMPTE 170M), BT.2020 (non-constant luminance;
constant-luminance BT.2020 is converted as NCL), FCC and SMPTE 240M; limited (16–235/240) or full
(0–255, also implied by the ``yuvj*`` pixel formats) range. Untagged streams get FFmpeg's defaults,
as swscale applies them (``sws_getCoefficients(SWS_CS_DEFAULT)``): BT.601, limited range. The RGB is
the stream's own primaries and transfer (no gamut or transfer conversion: BT.2020 video stays in
BT.2020 primaries, as with ffmpeg's ``-pix_fmt rgb24``).

Chroma upsampling (``CHROMA_UPSAMPLING``, the default of ``chroma=``; default ``"bilinear"`` so that
the PyAV and DALI executors agree): ``"nearest"`` is OpenCV's ``COLOR_YUV2RGB_I420`` (each chroma
sample covers its 2×2 luma block, like swscale's default unscaled conversion; for other matrices
than BT.601 limited, the same replication followed by ``cv2.transform``). ``"bilinear"`` upsamples U and V 2× with ``cv2.resize(INTER_LINEAR)`` (half-pixel,
centre-sited, edge samples replicated) and converts with the frame's 3×4 matrix
(``cv2.transform``); this is what DALI's CPU decoder (= swscale ``BILINEAR|FULL_CHR_H_INT|ACCURATE_RND``
on frames without a chroma location, e.g. VP9) does, to a mean absolute difference of ~0.4/255 and
at most 2 (vs ~2.4–3.8 mean, up to ~74, for ``"nearest"``), at ~4× the conversion cost (~0.4 vs
~0.1 ms per 340×256 frame). Crops stay exact: each luma row/column reads the chroma samples on
either side, so the box is converted with a one-sample chroma margin (clamped at the frame, where
the replicated edge is the same as for the whole frame) and trimmed. Note: H.264's default chroma
location is "left" (co-sited horizontally); swscale honours it on H.264 frames, DALI's NVDEC path
was not measured here.

Rotation: ``rotation_degrees`` is the counter-clockwise rotation that turns a coded frame upright
(``VideoRecord.rotation_degrees``), applied with ``np.rot90(frame, k=rotation_degrees // 90)``. Crop
boxes are given in upright pixels; ``upright_box_to_coded`` maps them back to the coded frame so
the crop happens before conversion and only the crop is rotated.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import av
import cv2
import numpy as np


class Box(NamedTuple):
    """An axis-aligned pixel box: rows [top, top + height), columns [left, left + width)."""

    top_pixels: int
    left_pixels: int
    height_pixels: int
    width_pixels: int


def is_fast_format(frame: av.VideoFrame) -> bool:
    """True when ``frame`` takes the plane-cropping path (yuv420p with even width and height)."""
    return frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0


ChromaUpsampling = Literal["nearest", "bilinear"]

CHROMA_UPSAMPLING: ChromaUpsampling = "bilinear"
"""The executor's one conversion (``frame_to_rgb``/``frame_region_to_rgb`` default). "nearest" is
~4× cheaper; "bilinear" matches DALI's decoded frames (see the module docstring)."""


def frame_to_rgb(frame: av.VideoFrame, *, chroma: ChromaUpsampling | None = None) -> np.ndarray:
    """The whole coded frame as ``(H, W, 3)`` uint8 RGB (coded orientation, no rotation)."""
    return frame_region_to_rgb(frame, Box(0, 0, frame.height, frame.width), chroma=chroma)


def frame_region_to_rgb(frame: av.VideoFrame, box: Box, *, chroma: ChromaUpsampling | None = None) -> np.ndarray:
    """The pixels of ``box`` (coded-frame pixels) as ``(box.height, box.width, 3)`` uint8 RGB.

    Equal to ``frame_to_rgb(frame, chroma=chroma)[top:top + height, left:left + width]``; only the
    box (rounded out to even coordinates, or with a one-sample chroma margin for "bilinear") is
    converted. ``chroma`` None: ``CHROMA_UPSAMPLING``.
    """
    top, left, height, width = box
    if height <= 0 or width <= 0 or top < 0 or left < 0 or top + height > frame.height or left + width > frame.width:
        raise ValueError(f"box {tuple(box)} (top, left, height, width) is not inside the {frame.width}x{frame.height} frame")
    colour = frame_colour(frame)
    if not is_fast_format(frame):
        rgb = frame.reformat(format="rgb24", src_colorspace=_SWS_COLORSPACE[colour.matrix],
                             src_color_range=2 if colour.full_range else 1).to_ndarray()
        return np.ascontiguousarray(rgb[top : top + height, left : left + width])
    mode = CHROMA_UPSAMPLING if chroma is None else chroma
    if mode == "bilinear":
        return _bilinear_region(frame, box, yuv_to_rgb_matrix(colour))
    if mode != "nearest":
        raise ValueError(f"chroma ({mode!r}) must be 'nearest' or 'bilinear'")
    if colour != UNTAGGED_COLOUR:
        return _nearest_region(frame, box, yuv_to_rgb_matrix(colour))
    top_even, left_even = top & ~1, left & ~1
    bottom_even = min(frame.height, (top + height + 1) & ~1)
    right_even = min(frame.width, (left + width + 1) & ~1)
    luma = _plane(frame, 0, frame.height, frame.width)[top_even:bottom_even, left_even:right_even]
    rows, cols = slice(top_even // 2, bottom_even // 2), slice(left_even // 2, right_even // 2)
    chroma_u = _plane(frame, 1, frame.height // 2, frame.width // 2)[rows, cols]
    chroma_v = _plane(frame, 2, frame.height // 2, frame.width // 2)[rows, cols]
    h, w = luma.shape
    i420 = np.empty((h * 3 // 2, w), dtype=np.uint8)
    i420[:h] = luma
    quarter = (h // 2) * (w // 2)
    i420[h:].reshape(-1)[:quarter] = chroma_u.reshape(-1)
    i420[h:].reshape(-1)[quarter:] = chroma_v.reshape(-1)
    rgb = cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
    dy, dx = top - top_even, left - left_even
    if dy or dx or h != height or w != width:
        rgb = np.ascontiguousarray(rgb[dy : dy + height, dx : dx + width])
    return rgb


def _nearest_region(frame: av.VideoFrame, box: Box, matrix: np.ndarray) -> np.ndarray:
    """Each chroma sample covers its 2×2 luma block; then ``matrix`` (any matrix and range)."""
    top, left, height, width = box
    rows, cols = slice(top // 2, (top + height - 1) // 2 + 1), slice(left // 2, (left + width - 1) // 2 + 1)
    half_h, half_w = frame.height // 2, frame.width // 2
    dy, dx = top & 1, left & 1
    planes = [np.repeat(np.repeat(_plane(frame, i, half_h, half_w)[rows, cols], 2, axis=0), 2, axis=1)
              [dy : dy + height, dx : dx + width] for i in (1, 2)]
    luma = _plane(frame, 0, frame.height, frame.width)[top : top + height, left : left + width]
    yuv = cv2.merge([np.ascontiguousarray(p) for p in (luma, *planes)])
    return cv2.transform(yuv, matrix)


def _bilinear_region(frame: av.VideoFrame, box: Box, matrix: np.ndarray) -> np.ndarray:
    top, left, height, width = box
    half_h, half_w = frame.height // 2, frame.width // 2
    # Luma row y reads chroma rows floor((y - 1) / 2) and floor((y + 1) / 2) (centre-sited, 2×):
    # the box's chroma rows plus one on each side, clamped at the frame edge. Same for columns.
    c_top, c_bottom = max(0, top // 2 - 1), min(half_h, (top + height - 1) // 2 + 2)
    c_left, c_right = max(0, left // 2 - 1), min(half_w, (left + width - 1) // 2 + 2)
    size = (2 * (c_right - c_left), 2 * (c_bottom - c_top))
    rows = slice(top - 2 * c_top, top - 2 * c_top + height)
    cols = slice(left - 2 * c_left, left - 2 * c_left + width)
    luma = _plane(frame, 0, frame.height, frame.width)[top : top + height, left : left + width]
    chroma_u = cv2.resize(_plane(frame, 1, half_h, half_w)[c_top:c_bottom, c_left:c_right], size, interpolation=cv2.INTER_LINEAR)
    chroma_v = cv2.resize(_plane(frame, 2, half_h, half_w)[c_top:c_bottom, c_left:c_right], size, interpolation=cv2.INTER_LINEAR)
    yuv = cv2.merge((np.ascontiguousarray(luma), np.ascontiguousarray(chroma_u[rows, cols]), np.ascontiguousarray(chroma_v[rows, cols])))
    return cv2.transform(yuv, matrix)  # float arithmetic, rounded and saturated


YuvMatrix = Literal["bt601", "bt709", "bt2020", "fcc", "smpte240m"]

LUMA_WEIGHTS: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
    "fcc": (0.30, 0.11),
    "smpte240m": (0.212, 0.087),
}
"""(Kr, Kb) of each matrix: Y = Kr·R + (1 − Kr − Kb)·G + Kb·B (ITU-R BT.601/709/2020, FCC, SMPTE 240M)."""


class YuvColour(NamedTuple):
    """How a stream's YUV maps to RGB: the matrix (``LUMA_WEIGHTS``) and the range."""

    matrix: YuvMatrix
    full_range: bool
    """True: Y, U, V use 0–255 (JPEG/"pc" range); False: Y 16–235, U/V 16–240 (MPEG/"tv" range)."""


UNTAGGED_COLOUR = YuvColour("bt601", False)
"""FFmpeg's default for a stream without colour tags (swscale's ``SWS_CS_DEFAULT``, limited range)."""

# AVColorSpace values (libavutil/pixfmt.h) → matrix; AVCOL_SPC_UNSPECIFIED (2), RGB (0), YCgCo (8)
# and the rest fall back to FFmpeg's default, BT.601.
_AVCOL_SPC_MATRIX: dict[int, YuvMatrix] = {1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_AVCOL_RANGE_JPEG = 2
# The matrix as swscale's SWS_CS_* constant (libswscale/swscale.h), for the reformat path.
_SWS_COLORSPACE: dict[str, int] = {"bt709": 1, "fcc": 4, "bt601": 5, "smpte240m": 7, "bt2020": 9}


def frame_colour(frame: av.VideoFrame) -> YuvColour:
    """The matrix and range ``frame`` declares (``frame.colorspace``/``color_range``, and ``yuvj*``
    formats for full range); FFmpeg's defaults (BT.601, limited) where it declares none."""
    return declared_colour(int(frame.colorspace), int(frame.color_range), frame.format.name)


def declared_colour(colorspace: int, color_range: int, pixel_format: str) -> YuvColour:
    """The colour of AVColorSpace ``colorspace`` / AVColorRange ``color_range`` tags (a frame's or a
    stream's ``codec_context``), ``yuvj*`` formats meaning full range; FFmpeg's defaults when untagged."""
    full_range = color_range == _AVCOL_RANGE_JPEG or pixel_format.startswith("yuvj")
    return YuvColour(_AVCOL_SPC_MATRIX.get(colorspace, "bt601"), full_range)


_MATRICES: dict[YuvColour, np.ndarray] = {}


def yuv_to_rgb_matrix(colour: YuvColour) -> np.ndarray:
    """3×4 float32 matrix ``M`` with ``[R, G, B] = M · [Y, U, V, 1]`` for 8-bit YUV of ``colour``."""
    cached = _MATRICES.get(colour)
    if cached is None:
        cached = _MATRICES[colour] = _matrix(*LUMA_WEIGHTS[colour.matrix], full_range=colour.full_range)
    return cached


def _matrix(kr: float, kb: float, *, full_range: bool) -> np.ndarray:
    kg = 1.0 - kr - kb
    luma, chroma = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    coefficients = np.array(
        [
            [luma, 0.0, 2.0 * (1.0 - kr) * chroma],
            [luma, -2.0 * kb * (1.0 - kb) / kg * chroma, -2.0 * kr * (1.0 - kr) / kg * chroma],
            [luma, 2.0 * (1.0 - kb) * chroma, 0.0],
        ]
    )
    offsets = -coefficients @ np.array([0.0 if full_range else 16.0, 128.0, 128.0])
    return np.hstack([coefficients, offsets[:, None]]).astype(np.float32)


def bt601_rgb_correction(colour: YuvColour) -> np.ndarray:
    """3×4 float64 ``C`` with ``rgb_colour = C · [R, G, B, 1]`` for RGB that was converted as BT.601
    (same range as ``colour``), as DALI does for every stream: ``M_colour · M_601⁻¹``. Exact up to the
    clipping and rounding of the BT.601 conversion (see ``clipserve.executors.dali``, "Colour")."""
    bt601 = np.vstack([yuv_to_rgb_matrix(YuvColour("bt601", colour.full_range)), [0.0, 0.0, 0.0, 1.0]]).astype(np.float64)
    target = np.vstack([yuv_to_rgb_matrix(colour), [0.0, 0.0, 0.0, 1.0]]).astype(np.float64)
    return (target @ np.linalg.inv(bt601))[:3]


YUV_TO_RGB_BT601_LIMITED: np.ndarray = yuv_to_rgb_matrix(UNTAGGED_COLOUR)
"""``[R, G, B] = M · [Y, U, V, 1]`` (3×4 float32), BT.601 limited range, as swscale's default and DALI."""


def _plane(frame: av.VideoFrame, index: int, height: int, width: int) -> np.ndarray:
    plane = frame.planes[index]
    data = np.frombuffer(plane, dtype=np.uint8)
    return data[: plane.line_size * height].reshape(height, plane.line_size)[:, :width]


def coded_size(upright_height_pixels: int, upright_width_pixels: int, rotation_degrees: int) -> tuple[int, int]:
    """(height, width) of the coded frame whose upright form has the given size."""
    if rotation_degrees % 180:
        return upright_width_pixels, upright_height_pixels
    return upright_height_pixels, upright_width_pixels


def upright_box_to_coded(box: Box, coded_height_pixels: int, coded_width_pixels: int, rotation_degrees: int) -> Box:
    """Map a box in upright pixels to the coded-frame box whose rotation is that upright box.

    ``rotate_upright(coded[coded_box], r) == rotate_upright(coded, r)[box]`` for r in 0/90/180/270.
    """
    top, left, height, width = box
    hc, wc = coded_height_pixels, coded_width_pixels
    turns = _turns(rotation_degrees)
    if turns == 0:
        return box
    if turns == 1:  # upright[i, j] = coded[j, wc - 1 - i]
        return Box(left, wc - top - height, width, height)
    if turns == 2:  # upright[i, j] = coded[hc - 1 - i, wc - 1 - j]
        return Box(hc - top - height, wc - left - width, height, width)
    # turns == 3: upright[i, j] = coded[hc - 1 - j, i]
    return Box(hc - left - width, top, width, height)


def rotate_upright(image: np.ndarray, rotation_degrees: int) -> np.ndarray:
    """Rotate ``image`` ``(H, W, ...)`` counter-clockwise by ``rotation_degrees`` (a contiguous copy when rotated)."""
    turns = _turns(rotation_degrees)
    if turns == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=turns, axes=(0, 1)))


def _turns(rotation_degrees: int) -> int:
    if rotation_degrees % 90:
        raise ValueError(f"rotation_degrees ({rotation_degrees}) must be a multiple of 90 (0, 90, 180 or 270)")
    return (rotation_degrees // 90) % 4
