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

Below the rows, a timeline strip (``timeline_geometry``) shows where the ρ clips sit in the video::

    | timeline | video 10.00 s | 2 clips of 2.13 s | starts span 2.10 s                     |
    | t_max 3.00 s: every clip starts in 1.20-4.20 s (shaded)                              |
    |  video   [==================================================================]       |
    |  clip 0  [        ####                   :                  ]                       |
    |  clip 1  [                      ####     :                  ]  <- [start, end) per clip,
    |          0 s     2 s     4 s     6 s     8 s     10 s          shaded: the t_max window

The second line and the shaded window follow the plan's ``temporal_sampling``: each mode has its
entry in ``START_RULES`` (``random``: the t_max window, or every possible start when global;
``centre`` and ``uniform``: no draw, the start range each clip's fixed start is placed in). A new
mode adds its own.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
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


SPATIAL_CROP_NAMES = ("start", "centre", "end")
"""Names of the three spatial crops of the multi-view test, along the long side."""


def clip_label(plan: ClipPlan, row: int) -> str:
    """Row label: ``clip c``, or for the multi-view test (3 spatial crops) ``view v = clip k, crop NAME``."""
    spec = plan.clips[row]
    if plan.sampling.spatial_crops == 1:
        return f"clip {spec.clip_index}"
    return f"view {spec.clip_index} = clip {spec.temporal_index}, crop {SPATIAL_CROP_NAMES[spec.spatial_index]}"


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
        An RGB image: the rows (see ``sheet_geometry`` for where each frame is), then the
        timeline strip (see ``timeline_geometry``) from ``sheet_geometry(...).height_pixels`` down.
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
        header = f"{clip_label(plan, row)} | start {spec.start_seconds:.2f} s | {describe_augment(spec.augment)}"
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
    return append_timeline(sheet, plan)


# ----------------------------------------------------------------------------- timeline strip
TIMELINE_TITLE_HEIGHT_PIXELS = 34
TIMELINE_LABEL_WIDTH_PIXELS = 48
TIMELINE_VIDEO_BAR_HEIGHT_PIXELS = 8
TIMELINE_LANE_HEIGHT_PIXELS = 12
TIMELINE_LANE_GAP_PIXELS = 4
TIMELINE_AXIS_HEIGHT_PIXELS = 16
VIDEO_BAR = (96, 96, 108)
TIMELINE_TRACK = (40, 40, 48)
T_MAX_WINDOW = (62, 58, 30)
T_MAX_EDGE = (190, 170, 80)
CLIP_COLORS = ((86, 180, 233), (230, 159, 0), (0, 158, 115), (240, 228, 66),
               (0, 114, 178), (213, 94, 0), (204, 121, 167), (220, 220, 220))
"""Okabe-Ito colours, one per clip (cycled past 8 clips); the page uses the same list."""


def clip_color(clip_index: int) -> tuple[int, int, int]:
    """RGB colour of clip ``clip_index`` on the timeline (the page draws the same)."""
    return CLIP_COLORS[clip_index % len(CLIP_COLORS)]


def timeline_duration_seconds(plan: ClipPlan) -> float:
    """Length of the drawn timeline: the plan's ``duration_seconds``, else (hand-built plans) the
    end of the last clip."""
    if plan.duration_seconds is not None and plan.duration_seconds > 0:
        return plan.duration_seconds
    return max([c.start_seconds + plan.clip_duration_seconds for c in plan.clips] + [1e-3])


def clip_interval_seconds(plan: ClipPlan, clip_index: int) -> tuple[float, float]:
    """``[start, end)`` of clip ``clip_index`` in seconds: its start plus T·τ/target_fps."""
    start = plan.clips[clip_index].start_seconds
    return start, start + plan.clip_duration_seconds


def _last_start_seconds(plan: ClipPlan) -> float:
    """The end of the start range: the latest second a clip of this plan can start at."""
    return max(0.0, timeline_duration_seconds(plan) - plan.clip_duration_seconds)


def t_max_window_seconds(plan: ClipPlan) -> tuple[float, float]:
    """``[a, a + t_max]``, a window of width t_max (``sampling.max_span_seconds``) holding every clip
    start: from the earliest start, moved left if it would pass the last possible start.
    Global sampling (t_max None): every possible start, ``[0, duration − clip duration]``."""
    last_start = _last_start_seconds(plan)
    t_max = plan.sampling.max_span_seconds
    if t_max is None:
        return 0.0, last_start
    earliest = min(c.start_seconds for c in plan.clips)
    left = max(0.0, min(earliest, last_start - t_max))
    return left, left + t_max


@dataclass(frozen=True)
class TimelineGeometry:
    """Pixel geometry of the timeline strip (all values in pixels, in the image it is drawn on)."""

    top_pixels: int
    width_pixels: int
    num_clips: int
    duration_seconds: float

    @property
    def bar_left_pixels(self) -> int:
        """x of time 0."""
        return MARGIN_PIXELS + TIMELINE_LABEL_WIDTH_PIXELS

    @property
    def bar_right_pixels(self) -> int:
        """x of the end of the video (``duration_seconds``)."""
        return self.width_pixels - MARGIN_PIXELS - 1

    @property
    def video_bar_top_pixels(self) -> int:
        return self.top_pixels + TIMELINE_TITLE_HEIGHT_PIXELS

    def lane_top_pixels(self, clip_index: int) -> int:
        """Top of clip ``clip_index``'s lane (lanes are ``TIMELINE_LANE_HEIGHT_PIXELS`` high)."""
        first = self.video_bar_top_pixels + TIMELINE_VIDEO_BAR_HEIGHT_PIXELS + TIMELINE_LANE_GAP_PIXELS
        return first + clip_index * (TIMELINE_LANE_HEIGHT_PIXELS + TIMELINE_LANE_GAP_PIXELS)

    @property
    def lanes_bottom_pixels(self) -> int:
        return self.lane_top_pixels(self.num_clips - 1) + TIMELINE_LANE_HEIGHT_PIXELS

    @property
    def height_pixels(self) -> int:
        return self.lanes_bottom_pixels + TIMELINE_AXIS_HEIGHT_PIXELS + MARGIN_PIXELS - self.top_pixels

    def x_of(self, seconds: float) -> int:
        """x of time ``seconds`` (clamped to the video)."""
        fraction = min(max(seconds / self.duration_seconds, 0.0), 1.0)
        return self.bar_left_pixels + round(fraction * (self.bar_right_pixels - self.bar_left_pixels))


def timeline_geometry(plan: ClipPlan, width_pixels: int, top_pixels: int) -> TimelineGeometry:
    """Geometry of the strip for ``plan`` drawn ``width_pixels`` wide from y = ``top_pixels``."""
    return TimelineGeometry(top_pixels, width_pixels, len(plan.clips), timeline_duration_seconds(plan))


def _tick_step_seconds(duration_seconds: float) -> float:
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if duration_seconds / step <= 8:
            return float(step)
    return duration_seconds / 8


@dataclass(frozen=True)
class StartRule:
    """How a ``temporal_sampling`` mode placed the clip starts, as the timeline shows it."""

    caption: str
    """The strip's second title line (ASCII)."""
    window_seconds: tuple[float, float]
    """``[left, right]`` seconds shaded on every lane."""


def _random_starts(plan: ClipPlan) -> StartRule:
    left, right = t_max_window_seconds(plan)
    t_max = plan.sampling.max_span_seconds
    if t_max is None:
        subject = "the clip" if len(plan.clips) == 1 else "a clip"
        return StartRule(f"t_max global: {subject} may start anywhere in 0.00-{right:.2f} s (shaded)", (left, right))
    return StartRule(f"t_max {t_max:.2f} s: every clip starts in {left:.2f}-{right:.2f} s (shaded)", (left, right))


def _centre_starts(plan: ClipPlan) -> StartRule:
    last_start = _last_start_seconds(plan)
    k = plan.sampling.num_clips  # clips, not views: with spatial crops a clip is S rows
    placed = "the clip starts at the middle" if k == 1 else f"clip c starts at (c + 1/2)/{k}"
    return StartRule(f"centre sampling, nothing drawn: {placed} of the start range 0.00-{last_start:.2f} s (shaded)",
                     (0.0, last_start))


def _uniform_starts(plan: ClipPlan) -> StartRule:
    last_start = _last_start_seconds(plan)
    k, crops = plan.sampling.num_clips, plan.sampling.spatial_crops
    views = f", {crops} crops each: {k * crops} views" if crops > 1 else ""
    return StartRule(f"multi-view test, nothing drawn: {_count(k, 'clip')} evenly spaced, clip k starts at k/{k} "
                     f"of 0.00-{last_start:.2f} s (shaded){views}", (0.0, last_start))


START_RULES: dict[str, Callable[[ClipPlan], StartRule]] = {
    "random": _random_starts, "centre": _centre_starts, "uniform": _uniform_starts,
}
"""One caption-and-window rule per ``SamplingConfig.temporal_sampling`` mode."""


def start_rule(plan: ClipPlan) -> StartRule:
    """The rule of ``plan``'s sampling mode; a mode without an entry in ``START_RULES`` gets a plain
    one naming the mode and the start range (a sheet is never refused for want of a caption)."""
    rule = START_RULES.get(plan.sampling.temporal_sampling)
    if rule is not None:
        return rule(plan)
    last_start = _last_start_seconds(plan)
    return StartRule(f"{plan.sampling.temporal_sampling} sampling: starts within 0.00-{last_start:.2f} s (shaded)",
                     (0.0, last_start))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def describe_timeline(plan: ClipPlan) -> tuple[str, str]:
    """The strip's two title lines (ASCII): video and clip lengths, then how the starts were placed."""
    duration = timeline_duration_seconds(plan)
    starts = [c.start_seconds for c in plan.clips]
    first = f"timeline | video {duration:.2f} s | {_count(len(plan.clips), 'clip')} of {plan.clip_duration_seconds:.2f} s"
    first += f" | starts span {max(starts) - min(starts):.2f} s" if len(starts) > 1 else f" | starts at {starts[0]:.2f} s"
    return first, start_rule(plan).caption


def draw_timeline(image: Image.Image, plan: ClipPlan, geometry: TimelineGeometry) -> None:
    """Draw the strip of ``geometry`` on ``image``: the video bar, the t_max window (shaded, edges
    marked), one lane per clip with its [start, end) interval filled in its colour, a time axis."""
    draw = ImageDraw.Draw(image)
    font = _font()
    g = geometry
    first, second = describe_timeline(plan)  # the window below is the one the caption names
    draw.text((MARGIN_PIXELS, g.top_pixels + 3), first, fill=TEXT, font=font)
    draw.text((MARGIN_PIXELS, g.top_pixels + 17), second, fill=T_MAX_EDGE, font=font)
    left, right = g.bar_left_pixels, g.bar_right_pixels
    bar_top = g.video_bar_top_pixels
    draw.text((MARGIN_PIXELS, bar_top - 3), "video", fill=MUTED, font=font)
    for c in range(len(plan.clips)):  # the lanes' tracks, then the window over them, then the clips
        top = g.lane_top_pixels(c)
        draw.rectangle((left, top, right, top + TIMELINE_LANE_HEIGHT_PIXELS - 1), fill=TIMELINE_TRACK)
        lane = f"clip {plan.clips[c].clip_index}" if plan.sampling.spatial_crops == 1 else f"view {plan.clips[c].clip_index}"
        draw.text((MARGIN_PIXELS, top - 1), lane, fill=clip_color(c), font=font)
    w_left, w_right = (g.x_of(t) for t in start_rule(plan).window_seconds)
    lanes_top, lanes_bottom = g.lane_top_pixels(0), g.lanes_bottom_pixels - 1
    if w_right > w_left:
        draw.rectangle((w_left, lanes_top, w_right, lanes_bottom), fill=T_MAX_WINDOW)
    draw.rectangle((left, bar_top, right, bar_top + TIMELINE_VIDEO_BAR_HEIGHT_PIXELS - 1), fill=VIDEO_BAR)
    for x in (w_left, w_right):  # the window's edges (t_max = 0: one line), under the clips
        draw.line((x, bar_top - 2, x, lanes_bottom + 2), fill=T_MAX_EDGE, width=1)
    for c in range(len(plan.clips)):
        start, end = clip_interval_seconds(plan, c)
        x0, x1 = g.x_of(start), max(g.x_of(end) - 1, g.x_of(start))  # half-open [start, end)
        top = g.lane_top_pixels(c)
        draw.rectangle((x0, top, x1, top + TIMELINE_LANE_HEIGHT_PIXELS - 1), fill=clip_color(c))
    step = _tick_step_seconds(g.duration_seconds)
    axis_top = g.lanes_bottom_pixels + 2
    ticks = [k * step for k in range(int(g.duration_seconds / step + 1e-9) + 1)]
    for t in ticks:
        x = g.x_of(t)
        draw.line((x, axis_top, x, axis_top + 3), fill=MUTED)
        draw.text((min(x, right - 30), axis_top + 3), f"{t:g} s", fill=MUTED, font=font)


def append_timeline(sheet: Image.Image, plan: ClipPlan) -> Image.Image:
    """``sheet`` with the plan's timeline strip added below it (a new, taller image)."""
    geometry = timeline_geometry(plan, sheet.width, sheet.height)
    out = Image.new("RGB", (sheet.width, sheet.height + geometry.height_pixels), BACKGROUND)
    out.paste(sheet, (0, 0))
    draw_timeline(out, plan, geometry)
    return out


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
