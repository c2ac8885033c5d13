"""Contact sheets: one row per clip of a plan, its T augmented frames, labelled (Pillow).

Layout of a sheet for clips ``(ρ, C, T, S, S)``::

    +--------------------------------------------------------------+
    | clip 0 | start 0.53 s | crop 40x30+5+2 -> 32px | flip | ...    |  <- row header, HEADER_HEIGHT_PIXELS
    | [frame 0] [frame 1] ... [frame T-1]                          |  <- cells of cell_size_pixels, GAP
    |  0.53 s    0.80 s        2.40 s                              |  <- per-frame time, CAPTION_HEIGHT
    +--------------------------------------------------------------+
    | clip 1 ...                                                   |

Each frame is scaled up by an integer factor (nearest neighbour) so tiny crops stay visible;
``sheet_geometry`` gives the pixel position of every cell so tests can compare them to the clips.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipserve.plan_models import AugmentParams, ClipPlan

MARGIN_PIXELS = 8
GAP_PIXELS = 4
HEADER_HEIGHT_PIXELS = 16
CAPTION_HEIGHT_PIXELS = 14
MIN_CELL_SIZE_PIXELS = 64
MIN_SHEET_WIDTH_PIXELS = 480
BACKGROUND = (24, 24, 28)
TEXT = (230, 230, 230)
MUTED = (150, 150, 160)


@dataclass(frozen=True)
class SheetGeometry:
    """Pixel geometry of a contact sheet (all values in pixels)."""

    num_rows: int
    frames_per_row: int
    clip_size_pixels: int
    scale: int
    width_pixels: int
    height_pixels: int

    @property
    def cell_size_pixels(self) -> int:
        """Side of one frame cell: the clip size times the integer scale."""
        return self.clip_size_pixels * self.scale

    @property
    def row_height_pixels(self) -> int:
        return HEADER_HEIGHT_PIXELS + self.cell_size_pixels + CAPTION_HEIGHT_PIXELS + GAP_PIXELS

    def cell_origin(self, row: int, frame: int) -> tuple[int, int]:
        """(left, top) of the cell showing frame ``frame`` of clip ``row``."""
        left = MARGIN_PIXELS + frame * (self.cell_size_pixels + GAP_PIXELS)
        top = MARGIN_PIXELS + row * self.row_height_pixels + HEADER_HEIGHT_PIXELS
        return left, top


def sheet_geometry(num_clips: int, frames_per_clip: int, clip_size_pixels: int) -> SheetGeometry:
    """Geometry of the sheet for ρ=``num_clips`` rows of T=``frames_per_clip`` frames of S×S pixels."""
    scale = max(1, math.ceil(MIN_CELL_SIZE_PIXELS / clip_size_pixels))
    cell = clip_size_pixels * scale
    width = max(MIN_SHEET_WIDTH_PIXELS, 2 * MARGIN_PIXELS + frames_per_clip * cell + (frames_per_clip - 1) * GAP_PIXELS)
    row_height = HEADER_HEIGHT_PIXELS + cell + CAPTION_HEIGHT_PIXELS + GAP_PIXELS
    height = 2 * MARGIN_PIXELS + num_clips * row_height - GAP_PIXELS
    return SheetGeometry(num_clips, frames_per_clip, clip_size_pixels, scale, width, height)


def describe_augment(params: AugmentParams) -> str:
    """One-line description of a clip's augmentation draw (ASCII: the default font has few glyphs).

    The crop reads ``WIDTHxHEIGHT+LEFT+TOP`` in upright source pixels."""
    parts = [
        f"crop {params.crop_width_pixels}x{params.crop_height_pixels}+{params.crop_left_pixels}+{params.crop_top_pixels}"
        f" -> {params.output_size_pixels}px"
    ]
    if params.flip:
        parts.append("flip")
    if params.color_jitter is not None:
        j = params.color_jitter
        parts.append(
            f"jitter b{j.brightness_factor:.2f} c{j.contrast_factor:.2f} "
            f"s{j.saturation_factor:.2f} h{j.hue_shift_turns:+.2f}"
        )
    if params.grayscale:
        parts.append("gray")
    if params.blur_sigma_source_pixels is not None:
        parts.append(f"blur sigma {params.blur_sigma_source_pixels:.2f}px")
    return " | ".join(parts)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType: the bitmap font has no size
        return ImageFont.load_default()


def render_contact_sheet(plan: ClipPlan, clips: np.ndarray) -> Image.Image:
    """Draw the sheet of one plan's executed clips.

    Args:
        plan: the plan the clips were executed from (labels: start times, timestamps, augmentation).
        clips: ``(ρ, C, T, S, S)`` uint8, C = 3 (RGB), as ``execute_plan`` returns.

    Returns:
        An RGB image; see ``sheet_geometry`` for where each frame is.
    """
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1] != 3 or clips.shape[3] != clips.shape[4]:
        raise ValueError(f"clips must be uint8 (ρ, 3, T, S, S); got {clips.dtype} {tuple(clips.shape)}")
    num_clips, _, frames_per_clip, size, _ = clips.shape
    if num_clips != len(plan.clips):
        raise ValueError(f"clips has {num_clips} rows but the plan has {len(plan.clips)} clips")
    geometry = sheet_geometry(num_clips, frames_per_clip, size)
    sheet = Image.new("RGB", (geometry.width_pixels, geometry.height_pixels), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for row, spec in enumerate(plan.clips):
        header_top = MARGIN_PIXELS + row * geometry.row_height_pixels
        header = f"clip {spec.clip_index} | start {spec.start_seconds:.2f} s | {describe_augment(spec.augment)}"
        draw.text((MARGIN_PIXELS, header_top + 2), header, fill=TEXT, font=font)
        for t in range(frames_per_clip):
            frame = np.ascontiguousarray(clips[row, :, t].transpose(1, 2, 0))  # (S, S, 3)
            if geometry.scale > 1:
                frame = frame.repeat(geometry.scale, axis=0).repeat(geometry.scale, axis=1)
            left, top = geometry.cell_origin(row, t)
            sheet.paste(Image.fromarray(frame), (left, top))
            if t < len(spec.timestamps_seconds):
                caption = f"{spec.timestamps_seconds[t]:.2f}s"
                draw.text((left, top + geometry.cell_size_pixels + 1), caption, fill=MUTED, font=font)
    return sheet


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
