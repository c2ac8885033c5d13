"""Frames of the learnable world (``make-sample --preset learnable``): an object category that
persists, an appearance that drifts along the timeline.

Each video shows one large object whose *category* is the label and never changes: every category
has its own outline (disc, cross, square, ...) and its own markings (plain, striped, checkered, ...),
drawn in the object's own coordinates, so they turn, scale and stretch with it. Everything else
drifts smoothly along the video's timeline (as a fraction of the video's length), the way actors and
objects do in real footage:

- the object's own appearance: orientation (a quarter turn or more over the video, plus a wobble),
  scale (×1.6 from one end to the other), deformation (an area-preserving stretch), viewpoint
  (foreshortening along one axis, down to 70 %), position (a drift across the centre) and colour
  (its hue runs through 1.5 to 2.5 turns of the colour wheel; its luma stays apart from the
  background's);
- the scene: a low-contrast textured background panning sideways, and lighting (a gain moving from
  one value to another and a coloured tint whose hue also cycles).

So two clips far apart in time show the same category under different poses, sizes, colours and
lighting (a natural augmentation of each other), while two clips at one moment share all of that:
matching them needs no knowledge of the category. That is the paper's argument for a large t_max.

Frames are drawn in float64 with +, −, ×, / and comparisons only (cosines come from a table or from
scalar ``math``), edges antialiased by 2×2 supersampling, then converted to yuv420p with integer
arithmetic: bit-exact for a ``SampleVideo``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from clipserve.sample.pixels import _rgb_to_yuv420p, soft_waves
from clipserve.sample.spec import LEARNABLE_CLASS_NAMES, TRANSFER_CLASS_NAMES, SampleVideo

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(u, v) object-local coordinates (the object fits the unit disc) -> bool mask of the same shape."""


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    d2 = u * u + v * v
    return (d2 <= 1.0) & (d2 >= 0.16)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av_ = np.abs(u), np.abs(v)
    return ((au <= 0.36) & (av_ <= 1.0)) | ((av_ <= 0.36) & (au <= 1.0))


_FAN_AXES = [(math.cos(a), math.sin(a)) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]


def _fan(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    mask = u * u + v * v <= 0.09
    for c, s in _FAN_AXES:
        along, across = u * c + v * s, v * c - u * s
        mask |= (along >= 0.0) & (along <= 1.0) & (np.abs(across) <= 0.28)
    return mask


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (v <= 0.5) & (0.866 * u - 0.5 * v <= 0.5) & (-0.866 * u - 0.5 * v <= 0.5)


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    w = u - 0.45
    return (u * u + v * v <= 1.0) & (w * w + v * v > 0.5625)


def _letter_t(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.abs(u) <= 0.9) & (v >= -1.0) & (v <= -0.45)) | ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0))


def _hollow_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    m = np.maximum(np.abs(u), np.abs(v))
    return (m <= 0.8) & (m >= 0.38)


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    shaft = (u >= -1.0) & (u <= 0.2) & (np.abs(v) <= 0.18)
    head = (u >= 0.1) & (u <= 1.0) & (np.abs(v) <= (1.0 - u) * 0.75)
    return shaft | head


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)


SHAPES: dict[str, ShapeFn] = dict(zip(LEARNABLE_CLASS_NAMES, [
    _disc, _cross, _square, _triangle, _ring, _crescent, _fan, _letter_t, _hollow_square, _arrow]))
"""Category name -> the object's outline (each category has its own outline and its own markings)."""


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _solid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.ones(u.shape, dtype=bool)


def _stripes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac(u * 1.3) < 0.5


def _checker(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac(u * 1.1) < 0.5) ^ (_frac(v * 1.1) < 0.5)


def _dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    du, dv = _frac(u * 1.25) - 0.5, _frac(v * 1.25) - 0.5
    return du * du + dv * dv > 0.08


def _concentric(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac((u * u + v * v) * 1.6) < 0.5


def _halves(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u + 0.3 * v < 0.0


def _diamonds(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac((np.abs(u) + np.abs(v)) * 1.4) < 0.5


def _zigzag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac(v * 1.3 + 1.2 * np.abs(_frac(u * 1.3) - 0.5)) < 0.5


def _crosshatch(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac(u * 1.5) >= 0.3) & (_frac(v * 1.5) >= 0.3)


def _eye(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v > 0.2


PATTERNS: dict[str, ShapeFn] = dict(zip(LEARNABLE_CLASS_NAMES, [
    _solid, _stripes, _checker, _dots, _concentric, _halves, _diamonds, _zigzag, _crosshatch, _eye]))
"""Category name -> its surface pattern (True: the object's first colour, False: its second), in
object-local coordinates: the pattern turns, scales and stretches with the object."""


# --- the transfer world's categories (``make-sample --preset transfer``): outlines and markings
# none of the learnable world's categories has, drawn with the same operations


def _hexagon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av_ = np.abs(u), np.abs(v)
    return (av_ <= 0.866) & (0.866 * au + 0.5 * av_ <= 0.866)


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v * 3.0 <= 1.0


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v) <= 1.0


def _chevron(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    w = u - 0.8 * np.abs(v)
    return (np.abs(v) <= 0.9) & (w >= -0.6) & (w <= 0.1)


def _hourglass(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(v) <= 0.9) & (np.abs(u) <= np.abs(v) * 0.9 + 0.12)


def _kite(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.where(v < 0.0, np.abs(u) * 1.6 <= v + 1.0, np.abs(u) * 0.9 <= 0.55 - v * 0.55 + 1e-9) & (v <= 1.0)


def _octagon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av_ = np.abs(u), np.abs(v)
    return (au <= 0.9) & (av_ <= 0.9) & (au + av_ <= 1.3)


def _trapezoid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(v) <= 0.7) & (np.abs(u) <= 0.55 + 0.45 * (v + 0.7) / 1.4)


def _semicircle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 1.0) & (v <= 0.25)


def _pentagon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (v <= 0.8) & (np.abs(u) <= 0.95) & (v >= -1.0 + np.abs(u) * 0.65) & (np.abs(u) * 0.3 + v <= 0.95)


def _bands(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac(v * 2.2) < 0.35


def _grid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac(u * 2.0) >= 0.25) | (_frac(v * 2.0) >= 0.25)


def _waves(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac(u * 1.2 + 0.5 * np.abs(_frac(v * 1.6) - 0.5)) < 0.5


def _quarters(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * v >= 0.0


def _nested(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac(np.maximum(np.abs(u), np.abs(v)) * 2.4) < 0.5


def _diagonals(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac((u + v) * 1.1) < 0.5


def _spots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    du, dv = _frac(u * 0.9 + 0.25) - 0.5, _frac(v * 0.9 + 0.25) - 0.5
    return du * du + dv * dv > 0.05


def _ladder(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) >= 0.3) | (_frac(v * 2.5) < 0.3)


def _frame(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + (v + 0.3) * (v + 0.3) > 0.25


def _argyle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac((u + v) * 0.9) < 0.5) ^ (_frac((u - v) * 0.9) < 0.5)


SHAPES.update(zip(TRANSFER_CLASS_NAMES, [
    _hexagon, _ellipse, _diamond, _chevron, _hourglass, _kite, _octagon, _trapezoid, _semicircle, _pentagon]))
PATTERNS.update(zip(TRANSFER_CLASS_NAMES, [
    _bands, _grid, _waves, _quarters, _nested, _diagonals, _spots, _ladder, _frame, _argyle]))


@dataclass(frozen=True)
class LearnableState:
    """The drifting parameters of one video at one moment (what a single frame shows).

    Angles in radians, lengths in pixels, colours RGB in [0, 255] before lighting.
    """

    centre_x_pixels: float
    centre_y_pixels: float
    radius_pixels: float
    """Half extent of the object (its unit disc in pixels) before stretch and foreshortening."""
    angle_radians: float
    stretch_u: float
    """Scale of the object's local u axis (stretch × foreshortening); v gets ``stretch_v``."""
    stretch_v: float
    object_rgb: tuple[float, float, float]
    pan_pixels: float
    """Horizontal offset of the background texture."""
    gain: float
    """Lighting: multiplies background and object."""
    tint_rgb: tuple[float, float, float]
    """Lighting: added to background and object after the gain."""


@dataclass(frozen=True)
class LearnableLook:
    """Per-video random parameters; :meth:`state` turns them into the appearance at time t."""

    width: int
    height: int
    duration_seconds: float
    angle0: float
    turns: float  # signed turns over the whole video
    wobble_phase: float
    radius_mid: float
    scale_sign: float  # +1 grows, -1 shrinks over the video
    stretch_phase: float
    view_phase: float
    start_xy: tuple[float, float]
    end_xy: tuple[float, float]
    object_luma: float  # 0..255, fixed per video (contrasts with the background)
    object_chroma: float  # chroma radius of the object's colour
    object_hue0: float  # radians at t = 0
    object_hue_cycles: float  # signed hue turns over the whole video
    pan_start: float
    pan_speed: float  # pixels per second
    gain_a: float
    gain_b: float
    tint_chroma: float  # chroma radius of the lighting's tint
    tint_hue0: float
    tint_hue_cycles: float  # signed hue turns of the tint over the whole video

    def state(self, t_seconds: float) -> LearnableState:
        p = min(max(t_seconds / self.duration_seconds, 0.0), 1.0)  # position on the timeline, [0, 1]
        angle = self.angle0 + 2 * math.pi * self.turns * (p - 0.5) + 0.25 * math.sin(2 * math.pi * t_seconds / 2.3 + self.wobble_phase)
        radius = self.radius_mid * math.exp(math.log(1.6) * (p - 0.5) * self.scale_sign)
        stretch = 1.0 + 0.2 * math.sin(2 * math.pi * p + self.stretch_phase)
        view = 1.0 - 0.3 * (0.5 - 0.5 * math.cos(2 * math.pi * p + self.view_phase))  # foreshortening, [0.7, 1]
        x = self.start_xy[0] + (self.end_xy[0] - self.start_xy[0]) * p
        y = self.start_xy[1] + (self.end_xy[1] - self.start_xy[1]) * p

        return LearnableState(
            centre_x_pixels=x, centre_y_pixels=y, radius_pixels=radius, angle_radians=angle,
            stretch_u=stretch * view, stretch_v=1.0 / stretch, object_rgb=_hue_colour(self.object_luma, self.object_chroma,
                                                                       self.object_hue0 + 2 * math.pi * self.object_hue_cycles * p),
            pan_pixels=self.pan_start + self.pan_speed * t_seconds, gain=self.gain_a + (self.gain_b - self.gain_a) * p,
            tint_rgb=_hue_colour(0.0, self.tint_chroma, self.tint_hue0 + 2 * math.pi * self.tint_hue_cycles * p))


_LUMA = np.array([0.299, 0.587, 0.114])
"""BT.601 luma weights of R, G, B."""
_PAN_MARGIN_PIXELS = 48
"""Extra texture width on each side of the frame that the pan can move into."""


def _texture(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, float]:
    """((H, W + 2·margin, 3) float64 background texture, its mean luma): a two-colour gradient and
    soft low-contrast waves, random per video."""
    wide = width + 2 * _PAN_MARGIN_PIXELS
    ys = np.arange(height, dtype=np.float64)[:, None] / height  # (H, 1)
    xs = np.arange(wide, dtype=np.float64)[None, :] / width  # (1, W'), frame widths
    angle = float(rng.uniform(0, 2 * np.pi))
    ramp = (math.cos(angle) * xs + math.sin(angle) * ys) * 0.35  # (H, W')
    base = rng.uniform(60, 190)
    c0 = base + rng.uniform(-35, 35, size=3)
    c1 = c0 + rng.uniform(-15, 15, size=3)
    image = c0 + (c1 - c0) * ramp[..., None]
    waves = soft_waves(xs, ys, rng, max_cycles=4)
    image += (rng.uniform(2, 5) * waves)[..., None] * rng.uniform(0.5, 1.0, size=3)
    luma = float((image @ np.array([0.299, 0.587, 0.114])).mean())
    return image, luma


def _hue_colour(luma: float, chroma: float, hue_radians: float) -> tuple[float, float, float]:
    """RGB of a colour given its luma, chroma radius and hue angle (BT.601 YUV to RGB)."""
    u, v = chroma * math.cos(hue_radians), chroma * math.sin(hue_radians)
    return (luma + 1.403 * v, luma - 0.344 * u - 0.714 * v, luma + 1.773 * u)


def make_look(rng: np.random.Generator, video: SampleVideo, background_luma: float) -> LearnableLook:
    """Draw a video's :class:`LearnableLook` (after its texture, from the same generator)."""
    w, h = video.width_pixels, video.height_pixels
    unit = float(min(w, h))
    sign = 1.0 if (background_luma < 100 or (background_luma <= 155 and rng.random() < 0.5)) else -1.0
    direction = 1.0 if rng.random() < 0.5 else -1.0

    def point() -> tuple[float, float]:
        return (w / 2 + float(rng.uniform(-0.15, 0.15)) * unit, h / 2 + float(rng.uniform(-0.15, 0.15)) * unit)

    return LearnableLook(
        width=w, height=h, duration_seconds=max(video.duration_seconds, 1e-6),
        angle0=float(rng.uniform(-0.5, 0.5)), turns=direction * float(rng.uniform(0.25, 0.35)),
        wobble_phase=float(rng.uniform(0, 2 * math.pi)), radius_mid=0.4 * unit * float(rng.uniform(0.9, 1.1)),
        scale_sign=1.0 if rng.random() < 0.5 else -1.0, stretch_phase=float(rng.uniform(0, 2 * math.pi)),
        view_phase=float(rng.uniform(0, 2 * math.pi)), start_xy=point(), end_xy=point(),
        object_luma=min(max(background_luma + sign * float(rng.uniform(55, 90)), 10.0), 245.0),
        object_chroma=float(rng.uniform(45, 70)), object_hue0=float(rng.uniform(0, 2 * math.pi)),
        object_hue_cycles=(1.0 if rng.random() < 0.5 else -1.0) * float(rng.uniform(1.5, 2.5)),
        pan_start=float(rng.uniform(-0.5, 0.5)) * _PAN_MARGIN_PIXELS / 2,
        pan_speed=(1.0 if rng.random() < 0.5 else -1.0) * float(rng.uniform(2.0, 4.0)),
        gain_a=float(rng.uniform(0.7, 1.25)), gain_b=float(rng.uniform(0.7, 1.25)),
        tint_chroma=float(rng.uniform(25, 45)), tint_hue0=float(rng.uniform(0, 2 * math.pi)),
        tint_hue_cycles=(1.0 if rng.random() < 0.5 else -1.0) * float(rng.uniform(1.0, 2.0)))


# 2×2 supersampling offsets inside a pixel (pixel centres are at +0.5)
_SUBPIXEL_OFFSETS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))


def object_coverage(shape: ShapeFn, pattern: ShapeFn, state: LearnableState, height: int,
                    width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (H, W) float64 arrays in [0, 1]: the fraction of each pixel covered by the object's
    first colour (shape and pattern) and by its second (shape, not pattern); 2×2 supersampled."""
    first, second = np.zeros((height, width)), np.zeros((height, width))
    c, s = math.cos(state.angle_radians), math.sin(state.angle_radians)
    su, sv = state.radius_pixels * state.stretch_u, state.radius_pixels * state.stretch_v
    for ox, oy in _SUBPIXEL_OFFSETS:
        dx = np.arange(width, dtype=np.float64)[None, :] + ox - state.centre_x_pixels  # (1, W)
        dy = np.arange(height, dtype=np.float64)[:, None] + oy - state.centre_y_pixels  # (H, 1)
        u = (dx * c + dy * s) / su  # (H, W), object-local
        v = (dy * c - dx * s) / sv
        inside, on = shape(u, v), pattern(u, v)
        first += inside & on
        second += inside & ~on
    return first * 0.25, second * 0.25


def render_learnable_rgb(video: SampleVideo) -> Iterator[np.ndarray]:
    """The ``video.num_frames`` frames of a learnable-world video, each ``(H, W, 3)`` uint8 RGB."""
    width, height = video.width_pixels, video.height_pixels
    rng = np.random.default_rng(video.render_seed)
    texture, background_luma = _texture(rng, width, height)
    look = make_look(rng, video, background_luma)
    shape, pattern = SHAPES[video.label_name], PATTERNS[video.label_name]
    fps = float(video.fps)
    for i in range(video.num_frames):
        state = look.state(i / fps)
        offset = _PAN_MARGIN_PIXELS + state.pan_pixels
        left = int(math.floor(offset))
        frac = offset - left
        left = min(max(left, 0), texture.shape[1] - width - 1)
        background = texture[:, left:left + width] * (1.0 - frac) + texture[:, left + 1:left + 1 + width] * frac
        first, second = object_coverage(shape, pattern, state, height, width)
        first, second = first[..., None], second[..., None]  # (H, W, 1)
        colour = np.array(state.object_rgb)
        second_colour = colour + (90.0 if float(colour @ _LUMA) < 128.0 else -90.0)  # the pattern's other colour
        image = background * (1.0 - first - second) + colour * first + second_colour * second
        image = image * state.gain + np.array(state.tint_rgb)
        yield np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_learnable_yuv420p(video: SampleVideo) -> Iterator[np.ndarray]:
    """As :func:`render_learnable_rgb`, each frame packed ``(H * 3 // 2, W)`` uint8 yuv420p."""
    for rgb in render_learnable_rgb(video):
        yield _rgb_to_yuv420p(rgb)
