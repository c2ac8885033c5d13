"""The one RGB conversion of decoded frames, and the geometry of crops on rotated videos.

Every RGB pixel clipserve's PyAV path produces comes from ``frame_region_to_rgb`` (full frames are the
region that covers the frame), so a crop converted on its own equals, pixel for pixel, the same
crop taken from the fully converted frame:

- ``yuv420p`` frames with even width and height (nearly every H.264/VP9 video): the Y, U and V
  planes are cropped on even coordinates (whole chroma samples), converted with OpenCV's
  ``COLOR_YUV2RGB_I420`` (BT.601, limited range, each chroma sample covers its 2×2 luma block,
  every output pixel depends only on its own Y and its own chroma sample), and then trimmed to the
  exact box. That conversion is local, so cropping before converting changes nothing; it is also
  about 10× faster than swscale through ``VideoFrame.to_ndarray(format="rgb24")`` at 340×256.
- every other pixel format (full-range ``yuvj420p``, 4:2:2, 4:4:4, 10-bit, odd sizes, RGB codecs):
  swscale converts the whole frame to ``rgb24`` and the box is cut from that.

Rotation: ``rotation_degrees`` is the counter-clockwise rotation that turns a coded frame upright
(``VideoRecord.rotation_degrees``), applied with ``np.rot90(frame, k=rotation_degrees // 90)``. Crop
boxes are given in upright pixels; ``upright_box_to_coded`` maps them back to the coded frame so
the crop happens before conversion and only the crop is rotated.
"""

from __future__ import annotations

from typing import NamedTuple

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


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """The whole coded frame as ``(H, W, 3)`` uint8 RGB (coded orientation, no rotation)."""
    return frame_region_to_rgb(frame, Box(0, 0, frame.height, frame.width))


def frame_region_to_rgb(frame: av.VideoFrame, box: Box) -> np.ndarray:
    """The pixels of ``box`` (coded-frame pixels) as ``(box.height, box.width, 3)`` uint8 RGB.

    Equal to ``frame_to_rgb(frame)[top:top + height, left:left + width]``; only the box (rounded
    out to even coordinates) is converted.
    """
    top, left, height, width = box
    if height <= 0 or width <= 0 or top < 0 or left < 0 or top + height > frame.height or left + width > frame.width:
        raise ValueError(f"box {tuple(box)} (top, left, height, width) is not inside the {frame.width}x{frame.height} frame")
    if not is_fast_format(frame):
        rgb = frame.to_ndarray(format="rgb24")
        return np.ascontiguousarray(rgb[top : top + height, left : left + width])
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
