"""The sample videos' content: frames drawn with NumPy in yuv420p, bit-exact for a seed.

Every class of the default (motion) set is a distinct *motion pattern* (direction, speed, shape and
count of moving objects); backgrounds, object colours, positions and phases are drawn per video, so
a single frame says little about the class and a clip's motion says a lot. Classes are designed to
stay distinct under horizontal flips (the augmentation flips clips), so no two classes differ only
by left/right direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from clipserve.errors import ConfigError
from clipserve.sample.learnable import render_learnable_yuv420p
from clipserve.sample.pixels import _planes, _rgb_to_yuv420p, soft_waves, yuv420p_to_rgb  # noqa: F401 (re-export)
from clipserve.sample.spec import CLASS_NAMES, SampleVideo


@dataclass(frozen=True)
class _Blob:
    """One shape to draw: centre (pixels), rotation (radians), size (pixels).

    ``size`` is the radius (disc, ring), half side (square), half length (bar; its half width is
    ``size * aspect``), half major axis (ellipse; minor = ``size * aspect``) or circumradius (triangle).
    """

    shape: Literal["disc", "ring", "square", "bar", "ellipse", "triangle"]
    x: float
    y: float
    size: float
    angle: float = 0.0
    aspect: float = 0.5


@dataclass(frozen=True)
class _VideoLook:
    """Per-video random parameters (appearance and phases); motion *kind* comes from the class."""

    width: int
    height: int
    unit: float  # min(width, height) in pixels: sizes are fractions of it
    phase: float  # seconds added to t
    sign: float  # +1 / -1: horizontal direction (classes are flip-invariant by design)
    lane: float  # a free coordinate in [0, 1] (vertical lane, orbit centre, ...)
    speed: float  # multiplicative jitter of the class's speed, ~[0.85, 1.15]
    scale: float  # multiplicative jitter of the class's object size, ~[0.85, 1.15]


def _wrap(value: float, margin: float) -> float:
    """Map a position that grows forever onto [-margin, 1 + margin) so objects leave and re-enter."""
    span = 1.0 + 2.0 * margin
    return (value + margin) % span - margin


def _pass_football(t: float, lk: _VideoLook) -> list[_Blob]:
    # one elongated ball thrown in an arc across the frame, fast, over and over
    u = _wrap(0.7 * lk.speed * t, 0.08)
    q = min(max(u, 0.0), 1.0)
    v = 0.8 - 0.55 * (1.0 - (2.0 * q - 1.0) ** 2)
    slope = 0.55 * 4.0 * (2.0 * q - 1.0) * lk.height / lk.width
    x = u if lk.sign > 0 else 1.0 - u
    return [_Blob("ellipse", x * lk.width, v * lk.height, 0.09 * lk.unit * lk.scale,
                  math.atan(slope) * lk.sign, 0.5)]


def _riding_bike(t: float, lk: _VideoLook) -> list[_Blob]:
    # two wheels and a frame moving together horizontally at moderate speed
    u = _wrap(0.25 * lk.speed * t, 0.15)
    x = (u if lk.sign > 0 else 1.0 - u) * lk.width
    y = (0.45 + 0.3 * lk.lane) * lk.height
    r = 0.08 * lk.unit * lk.scale
    gap = 1.4 * r
    return [_Blob("ring", x - gap, y, r), _Blob("ring", x + gap, y, r),
            _Blob("bar", x, y - 0.6 * r, gap, 0.0, 0.12)]


def _juggling(t: float, lk: _VideoLook) -> list[_Blob]:
    # three small balls on a circular orbit, one revolution every 1.2 s
    cx, cy = (0.35 + 0.3 * lk.lane) * lk.width, 0.5 * lk.height
    radius = 0.25 * lk.unit
    w = 2 * math.pi / 1.2 * lk.speed * lk.sign
    return [_Blob("disc", cx + radius * math.cos(w * t + k * 2.094), cy + radius * math.sin(w * t + k * 2.094),
                  0.045 * lk.unit * lk.scale) for k in range(3)]


def _trampoline(t: float, lk: _VideoLook) -> list[_Blob]:
    # one square bouncing up and down with a large amplitude, once per second
    x = (0.25 + 0.5 * lk.lane) * lk.width
    y = (0.85 - 0.6 * abs(math.sin(math.pi * t * lk.speed))) * lk.height
    return [_Blob("square", x, y, 0.09 * lk.unit * lk.scale)]


def _skydiving(t: float, lk: _VideoLook) -> list[_Blob]:
    # four small triangles falling slowly with a gentle sway
    blobs = []
    for k in range(4):
        v = _wrap(0.18 * lk.speed * t + 0.27 * k + lk.lane, 0.1)
        u = (0.15 + 0.23 * k) + 0.03 * math.sin(2.0 * t + k)
        blobs.append(_Blob("triangle", u * lk.width, v * lk.height, 0.06 * lk.unit * lk.scale, math.pi))
    return blobs


def _poi(t: float, lk: _VideoLook) -> list[_Blob]:
    # a bar with a ball at each end spinning about its middle, 0.8 turns per second
    cx, cy = (0.35 + 0.3 * lk.lane) * lk.width, 0.5 * lk.height
    a = 2 * math.pi * 0.8 * lk.speed * lk.sign * t
    half = 0.3 * lk.unit
    r = 0.05 * lk.unit * lk.scale
    ends = [(cx + s * half * math.cos(a), cy + s * half * math.sin(a)) for s in (1.0, -1.0)]
    return [_Blob("bar", cx, cy, half, a, 0.08)] + [_Blob("disc", x, y, r) for x, y in ends]


def _dribbling(t: float, lk: _VideoLook) -> list[_Blob]:
    # one ball going quickly up and down in the lower half, two bounces per second
    x = (0.25 + 0.5 * lk.lane) * lk.width
    y = (0.7 + 0.18 * math.cos(2 * math.pi * 2.0 * lk.speed * t)) * lk.height
    return [_Blob("disc", x, y, 0.07 * lk.unit * lk.scale)]


def _skiing(t: float, lk: _VideoLook) -> list[_Blob]:
    # one diamond sliding diagonally downhill, wrapping around
    s = 0.35 * lk.speed * t
    u = _wrap(s + lk.lane, 0.12)
    v = _wrap(s, 0.12)
    x = u if lk.sign > 0 else 1.0 - u
    return [_Blob("square", x * lk.width, v * lk.height, 0.07 * lk.unit * lk.scale, math.pi / 4)]


def _marching(t: float, lk: _VideoLook) -> list[_Blob]:
    # a row of six small squares walking slowly sideways, bobbing in alternating step
    blobs = []
    for k in range(6):
        u = _wrap(0.1 * lk.speed * t + k / 6.0, 0.05)
        x = u if lk.sign > 0 else 1.0 - u
        y = (0.4 + 0.3 * lk.lane) * lk.height + 0.04 * lk.unit * math.sin(2 * math.pi * t / 0.6 + math.pi * k)
        blobs.append(_Blob("square", x * lk.width, y, 0.035 * lk.unit * lk.scale))
    return blobs


def _pushing_car(t: float, lk: _VideoLook) -> list[_Blob]:
    # one big box creeping sideways
    u = _wrap(0.08 * lk.speed * t + lk.lane, 0.22)
    x = u if lk.sign > 0 else 1.0 - u
    return [_Blob("bar", x * lk.width, 0.7 * lk.height, 0.3 * lk.unit * lk.scale, 0.0, 0.5)]


def _kite(t: float, lk: _VideoLook) -> list[_Blob]:
    # a triangle tracing a figure eight in the upper half, one loop every 3 s
    w = 2 * math.pi / 3.0 * lk.speed
    u = 0.5 + 0.28 * math.sin(w * t) * lk.sign
    v = 0.3 + 0.12 * math.sin(2 * w * t)
    return [_Blob("triangle", u * lk.width, v * lk.height, 0.08 * lk.unit * lk.scale, 0.3 * math.sin(w * t))]


def _hula_hoop(t: float, lk: _VideoLook) -> list[_Blob]:
    # a ring that grows and shrinks in place
    x = (0.3 + 0.4 * lk.lane) * lk.width
    r = (0.16 + 0.08 * math.sin(2 * math.pi * t / 0.8 * lk.speed)) * lk.unit * lk.scale
    return [_Blob("ring", x, 0.5 * lk.height, r)]


def _shaking_head(t: float, lk: _VideoLook) -> list[_Blob]:
    # a big disc jittering quickly left and right by a small amount
    x = (0.3 + 0.4 * lk.lane) * lk.width + 0.06 * lk.width * math.sin(2 * math.pi * t / 0.4 * lk.speed)
    return [_Blob("disc", x, 0.45 * lk.height, 0.12 * lk.unit * lk.scale)]


def _bowling(t: float, lk: _VideoLook) -> list[_Blob]:
    # a ball rolling away from the camera: moves up while shrinking, every 2 s
    p = ((t * lk.speed) / 2.0) % 1.0
    x = (0.35 + 0.3 * lk.lane) * lk.width
    return [_Blob("disc", x, (0.9 - 0.7 * p) * lk.height, (0.11 - 0.07 * p) * lk.unit * lk.scale)]


def _cartwheeling(t: float, lk: _VideoLook) -> list[_Blob]:
    # a square turning over (one turn per second) while travelling sideways
    u = _wrap(0.2 * lk.speed * t + lk.lane, 0.1)
    x = u if lk.sign > 0 else 1.0 - u
    return [_Blob("square", x * lk.width, 0.55 * lk.height, 0.1 * lk.unit * lk.scale, 2 * math.pi * t * lk.sign)]


def _swinging(t: float, lk: _VideoLook) -> list[_Blob]:
    # a pendulum: a rope from the top edge with a seat swinging back and forth every 2 s
    px, py = (0.3 + 0.4 * lk.lane) * lk.width, 0.0
    length = 0.75 * lk.height
    a = 0.6 * math.sin(2 * math.pi * t / 2.0 * lk.speed)
    ex, ey = px + length * math.sin(a), py + length * math.cos(a)
    return [_Blob("bar", (px + ex) / 2, (py + ey) / 2, length / 2, math.pi / 2 - a, 0.02 * lk.unit / (length / 2)),
            _Blob("square", ex, ey, 0.06 * lk.unit * lk.scale, -a)]


_PATTERNS: dict[str, Callable[[float, _VideoLook], list[_Blob]]] = {
    "passing American football (in game)": _pass_football,
    "riding a bike": _riding_bike,
    "juggling balls": _juggling,
    "bouncing on trampoline": _trampoline,
    "skydiving": _skydiving,
    "spinning poi": _poi,
    "dribbling basketball": _dribbling,
    "skiing (not slalom or crosscountry)": _skiing,
    "marching": _marching,
    "pushing car": _pushing_car,
    "flying kite": _kite,
    "hula hooping": _hula_hoop,
    "shaking head": _shaking_head,
    "bowling": _bowling,
    "cartwheeling": _cartwheeling,
    "swinging on something": _swinging,
}
if list(_PATTERNS) != CLASS_NAMES:  # pragma: no cover - a programming error, caught at import
    raise RuntimeError("clipserve.sample.renderers._PATTERNS must list CLASS_NAMES in order")



def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: a two-colour gradient at a random angle, soft low-frequency waves and two
    static distractor shapes, all random per video."""
    ys = np.linspace(0.0, 1.0, height)[:, None]  # (H, 1)
    xs = np.linspace(0.0, 1.0, width)[None, :]  # (1, W)
    angle = float(rng.uniform(0, 2 * np.pi))
    ramp = (math.cos(angle) * xs + math.sin(angle) * ys) * 0.7 + 0.15  # (H, W)
    c0, c1 = rng.uniform(20, 235, size=(2, 3))
    image = c0 + (c1 - c0) * ramp[..., None]  # (H, W, 3)
    waves = soft_waves(xs, ys, rng, max_cycles=6)
    image += (rng.uniform(6, 18) * waves)[..., None] * rng.uniform(0.5, 1.0, size=3)
    frame = np.clip(image, 0, 255).astype(np.uint8)
    unit = min(width, height)
    for _ in range(2):
        shape = ("disc", "square", "triangle", "ellipse", "ring")[int(rng.integers(5))]
        blob = _Blob(shape, float(rng.uniform(0, width)), float(rng.uniform(0, height)),  # type: ignore[arg-type]
                     float(rng.uniform(0.04, 0.1)) * unit, float(rng.uniform(0, np.pi)))
        _draw(frame, blob, rng.uniform(0, 255, size=3).astype(np.uint8))
    return frame


def _object_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour whose brightness differs clearly from the background's mean brightness."""
    weights = np.array([299, 587, 114], dtype=np.int64)  # BT.601 luma × 1000
    num_pixels = background.shape[0] * background.shape[1]
    bg_luma = int((background.reshape(-1, 3).astype(np.int64) * weights).sum()) / (1000 * num_pixels)
    colour = rng.uniform(0, 255, size=3)
    luma = float(colour[0] * 0.299 + colour[1] * 0.587 + colour[2] * 0.114)
    target = bg_luma + 110 if bg_luma < 128 else bg_luma - 110
    return np.clip(colour + (target - luma), 0, 255).astype(np.uint8)


def _mask(blob: _Blob, height: int, width: int) -> tuple[slice, slice, np.ndarray] | None:
    """Where ``blob`` covers a (height, width) pixel grid: its bounding box as (rows, cols) slices
    and a boolean mask over that box, or None if it lies outside the grid."""
    reach = blob.size * (1.5 if blob.shape in ("square", "triangle") else 1.05) + 1
    x0, x1 = max(0, int(blob.x - reach)), min(width, int(blob.x + reach) + 2)
    y0, y1 = max(0, int(blob.y - reach)), min(height, int(blob.y + reach) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - blob.x  # (1, w)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - blob.y  # (h, 1)
    c, s = math.cos(blob.angle), math.sin(blob.angle)
    px, py = dx * c + dy * s, dy * c - dx * s  # (h, w) each, shape-local coordinates
    r = blob.size
    if blob.shape == "disc":
        mask = px * px + py * py <= r * r
    elif blob.shape == "ring":
        d2 = px * px + py * py
        mask = (d2 <= r * r) & (d2 >= (0.7 * r) ** 2)
    elif blob.shape == "square":
        mask = (np.abs(px) <= r) & (np.abs(py) <= r)
    elif blob.shape == "bar":
        mask = (np.abs(px) <= r) & (np.abs(py) <= max(0.75, r * blob.aspect))
    elif blob.shape == "ellipse":
        mask = (px / r) ** 2 + (py / (r * blob.aspect)) ** 2 <= 1.0
    else:  # triangle pointing up (before rotation), circumradius r
        mask = (py <= 0.5 * r) & (0.866 * px - 0.5 * py <= 0.5 * r) & (-0.866 * px - 0.5 * py <= 0.5 * r)
    return slice(y0, y1), slice(x0, x1), mask


def _draw(image: np.ndarray, blob: _Blob, value: np.ndarray | int) -> None:
    """Paint ``blob`` into ``image`` ((H, W) or (H, W, C) uint8) in place; only its box is touched."""
    hit = _mask(blob, image.shape[0], image.shape[1])
    if hit is not None:
        rows, cols, mask = hit
        image[rows, cols][mask] = value


def render_frames(
    video: SampleVideo, *, pixel_format: Literal["rgb24", "yuv420p"] = "rgb24"
) -> Iterator[np.ndarray]:
    """The ``video.num_frames`` frames of ``video``.

    Frames are drawn in yuv420p, the format that is encoded: with ``pixel_format='yuv420p'`` each
    is a packed ``(H * 3 // 2, W)`` uint8 array (Y, then U and V; see ``encode_video``), with
    'rgb24' it is converted to ``(H, W, 3)`` uint8 RGB. Videos of the learnable world
    (``video.world == 'learnable'``) are drawn by :mod:`clipserve.sample.learnable`. Motion is a function of time in seconds
    (not of the frame index), so a class moves alike at 25, 29.97 and 30 fps. Deterministic and
    bit-exact: a function of ``video`` only.
    """
    width, height = video.width_pixels, video.height_pixels
    if width % 2 or height % 4:
        raise ConfigError(f"frame size {width}x{height}: width must be even and height a multiple of 4 (yuv420p)")
    if video.world == "learnable":
        for frame in render_learnable_yuv420p(video):
            yield frame if pixel_format == "yuv420p" else yuv420p_to_rgb(frame)
        return
    rng = np.random.default_rng(video.render_seed)
    background_rgb = _background(rng, width, height)
    colour = _object_colour(rng, background_rgb)
    colour_yuv = _rgb_to_yuv420p(np.broadcast_to(colour, (4, 2, 3)))  # (6, 2): Y rows, then U, V
    luma, u_value, v_value = int(colour_yuv[0, 0]), int(colour_yuv[4, 0]), int(colour_yuv[5, 0])
    background = _rgb_to_yuv420p(background_rgb)
    look = _VideoLook(
        width=width,
        height=height,
        unit=float(min(width, height)),
        phase=float(rng.uniform(0, 10)),
        sign=1.0 if rng.random() < 0.5 else -1.0,
        lane=float(rng.uniform(0, 1)),
        speed=float(rng.uniform(0.85, 1.15)),
        scale=float(rng.uniform(0.85, 1.15)),
    )
    pattern = _PATTERNS[video.label_name]
    fps = float(video.fps)
    for i in range(video.num_frames):
        frame = background.copy()
        y_plane, u_plane, v_plane = _planes(frame)
        for blob in pattern(i / fps + look.phase, look):
            _draw(y_plane, blob, luma)
            hit = _mask(_Blob(blob.shape, blob.x / 2, blob.y / 2, blob.size / 2, blob.angle, blob.aspect),
                        height // 2, width // 2)
            if hit is not None:
                rows, cols, mask = hit
                u_plane[rows, cols][mask] = u_value
                v_plane[rows, cols][mask] = v_value
        yield frame if pixel_format == "yuv420p" else yuv420p_to_rgb(frame)
