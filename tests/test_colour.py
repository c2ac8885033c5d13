"""Colour as the file declares it: videos encoded from known RGB with a given matrix and range, tagged
(or not) in the stream, must decode through the executor's conversion back to that RGB."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from clipserve.executors.pyav import decode_frames
from clipserve.executors.yuv import (
    LUMA_WEIGHTS,
    UNTAGGED_COLOUR,
    Box,
    YuvColour,
    frame_colour,
    frame_region_to_rgb,
    frame_to_rgb,
    yuv_to_rgb_matrix,
)

H, W = 64, 96
# (name, codec, container, AVColorSpace tag or None, AVColorRange tag or None, colour the YUV is made with)
CASES = [
    ("h264_bt709_limited", "libx264", "mp4", 1, 1, YuvColour("bt709", False)),
    ("h264_bt709_full", "libx264", "mp4", 1, 2, YuvColour("bt709", True)),
    ("h264_bt2020_limited", "libx264", "mp4", 9, 1, YuvColour("bt2020", False)),
    ("h264_bt601_tagged", "libx264", "mp4", 6, 1, YuvColour("bt601", False)),
    ("h264_untagged", "libx264", "mp4", None, None, UNTAGGED_COLOUR),
    ("vp9_bt709_limited", "libvpx-vp9", "webm", 1, 1, YuvColour("bt709", False)),
    ("vp9_bt709_full", "libvpx-vp9", "webm", 1, 2, YuvColour("bt709", True)),
    ("vp9_untagged", "libvpx-vp9", "webm", None, None, UNTAGGED_COLOUR),
]


def rgb_to_yuv(rgb: np.ndarray, colour: YuvColour) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The forward transform of ITU-R BT.601/709/2020 (written out independently of ``yuv.py``):
    ``(H, W, 3)`` uint8 RGB → full-resolution Y, U, V uint8 planes in ``colour``'s range."""
    kr, kb = LUMA_WEIGHTS[colour.matrix]
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = kr * r + (1.0 - kr - kb) * g + kb * b
    u, v = (b - y) / (2.0 * (1.0 - kb)), (r - y) / (2.0 * (1.0 - kr))
    if colour.full_range:
        planes = (255.0 * y, 128.0 + 255.0 * u, 128.0 + 255.0 * v)
    else:
        planes = (16.0 + 219.0 * y, 128.0 + 224.0 * u, 128.0 + 224.0 * v)
    return tuple(np.clip(np.round(p), 0, 255).astype(np.uint8) for p in planes)  # type: ignore[return-value]


def source_rgb(kind: str) -> np.ndarray:
    """``(H, W, 3)`` uint8: a solid saturated colour, or smooth gradients in every channel."""
    rgb = np.empty((H, W, 3), np.uint8)
    if kind == "solid":
        rgb[:] = (200, 40, 90)
    else:
        rows, cols = np.mgrid[0:H, 0:W]
        rgb[..., 0] = 30 + cols * 190 // (W - 1)
        rgb[..., 1] = 220 - rows * 180 // (H - 1)
        rgb[..., 2] = 60 + (rows + cols) * 120 // (H + W - 2)
    return rgb


def encode_tagged(path: Path, rgb: np.ndarray, *, codec: str, container_format: str, colorspace: int | None,
                  color_range: int | None, colour: YuvColour, num_frames: int = 4) -> Path:
    """Encode ``rgb`` (converted with ``colour``, chroma averaged 2×2) losslessly (x264 qp 0) or
    near-losslessly (VP9 crf 4), with the stream tagged ``colorspace``/``color_range`` (None: untagged)."""
    y, u, v = rgb_to_yuv(rgb, colour)
    half = [np.round(p.reshape(H // 2, 2, W // 2, 2).astype(np.float64).mean(axis=(1, 3))).astype(np.uint8) for p in (u, v)]
    i420 = np.concatenate([y.reshape(-1), half[0].reshape(-1), half[1].reshape(-1)]).reshape(H * 3 // 2, W)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if color_range is not None:
            stream.codec_context.color_range = color_range
        stream.options = {"qp": "0"} if codec == "libx264" else {"crf": "4", "b": "0"}
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


@pytest.mark.parametrize("kind", ["solid", "gradient"])
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_decoded_rgb_follows_the_declared_matrix_and_range(tmp_path: Path, case: tuple, kind: str) -> None:
    name, codec, container_format, colorspace, color_range, colour = case
    rgb = source_rgb(kind)
    path = encode_tagged(tmp_path / f"{name}.{container_format}", rgb, codec=codec, container_format=container_format,
                         colorspace=colorspace, color_range=color_range, colour=colour)
    frame = first_frame(path)
    assert frame_colour(frame) == colour
    decoded = decode_frames(path, [0, 3]).astype(int)  # the PyAV executor itself
    error = np.abs(decoded - rgb.astype(int))
    # 8-bit YUV rounding (±1) plus, on gradients, the 2×2 chroma average and bilinear upsampling
    assert error.max() <= (2 if kind == "solid" else 4), (name, kind, error.max())
    assert error.mean() < (1.0 if kind == "solid" else 1.5), (name, kind, error.mean())
    for chroma in ("nearest", "bilinear"):
        assert np.abs(frame_to_rgb(frame, chroma=chroma).astype(int) - rgb).max() <= (2 if kind == "solid" else 6)


@pytest.mark.parametrize("case", [c for c in CASES if c[5] != UNTAGGED_COLOUR], ids=[c[0] for c in CASES if c[5] != UNTAGGED_COLOUR])
def test_the_untagged_default_would_be_visibly_wrong(tmp_path: Path, case: tuple) -> None:
    """The check above can fail: converting these streams with FFmpeg's untagged default (BT.601,
    limited) misses the source colour by many levels."""
    name, codec, container_format, colorspace, color_range, colour = case
    if colour == YuvColour("bt601", False):
        pytest.skip("BT.601 limited is the default itself")
    rgb = source_rgb("solid")
    path = encode_tagged(tmp_path / f"{name}.{container_format}", rgb, codec=codec, container_format=container_format,
                         colorspace=colorspace, color_range=color_range, colour=colour)
    frame = first_frame(path)
    y, u, v = (np.asarray(p, np.float32) for p in rgb_to_yuv(rgb[:1, :1], colour))
    as_default = yuv_to_rgb_matrix(UNTAGGED_COLOUR) @ np.array([y.item(), u.item(), v.item(), 1.0], np.float32)
    assert np.abs(np.clip(np.round(as_default), 0, 255) - rgb[0, 0]).max() >= 8
    assert np.abs(frame_to_rgb(frame).astype(int) - rgb).max() <= 2


@pytest.mark.parametrize("chroma", ["nearest", "bilinear"])
def test_tagged_region_conversion_equals_crop_of_full_conversion(tmp_path: Path, chroma: str) -> None:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = encode_tagged(tmp_path / "noise709.mp4", rgb, codec="libx264", container_format="mp4", colorspace=1,
                         color_range=1, colour=YuvColour("bt709", False))
    frame = first_frame(path)
    full = frame_to_rgb(frame, chroma=chroma)  # type: ignore[arg-type]
    boxes = [Box(0, 0, H, W), Box(1, 1, 1, 1), Box(H - 1, W - 1, 1, 1), Box(3, 5, 7, 9), Box(0, 1, H, W - 1)]
    for _ in range(100):
        top, left = int(rng.integers(0, H)), int(rng.integers(0, W))
        boxes.append(Box(top, left, int(rng.integers(1, H - top + 1)), int(rng.integers(1, W - left + 1))))
    for top, left, height, width in boxes:
        region = frame_region_to_rgb(frame, Box(top, left, height, width), chroma=chroma)  # type: ignore[arg-type]
        assert np.array_equal(region, full[top : top + height, left : left + width]), (top, left, height, width)


def test_full_range_pixel_format_and_444_take_the_declared_colour(tmp_path: Path) -> None:
    """Formats outside the fast path (4:4:4 here) go through swscale, told the same matrix and range."""
    rgb = source_rgb("gradient")
    colour = YuvColour("bt709", True)
    y, u, v = rgb_to_yuv(rgb, colour)
    path = tmp_path / "h264_444_709_full.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv444p"
        stream.codec_context.colorspace, stream.codec_context.color_range = 1, 2
        stream.options = {"qp": "0"}
        frame = av.VideoFrame.from_ndarray(np.stack([y, u, v]), format="yuv444p")
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frame = first_frame(path)
    assert frame.format.name in ("yuv444p", "yuvj444p") and frame_colour(frame) == colour
    assert np.abs(decode_frames(path, [0]).astype(int)[0] - rgb).max() <= 2


# --- the DALI path: DALI converts as BT.601 whatever the tags; the executor corrects in its graph ------

DALI_RAW_BT709_MAX_ERROR_LEVELS = 32
"""Documented bound of DALI's own conversion on BT.709-tagged VP9 vs the declared colour, in 8-bit
levels (measured: 20 on the solid colour, 30 on the gradients; ``clipserve.executors.dali``)."""
DALI_CORRECTED_MAX_ERROR_LEVELS = 3
"""The same after the executor's in-graph correction (measured: 2)."""


@pytest.mark.parametrize("kind", ["solid", "gradient"])
@pytest.mark.parametrize("colour_tags", [(1, 1, YuvColour("bt709", False)), (1, 2, YuvColour("bt709", True)),
                                         (9, 1, YuvColour("bt2020", False))], ids=["bt709", "bt709_full", "bt2020"])
def test_dali_cpu_follows_the_declared_colour_through_its_correction(tmp_path: Path, kind: str, colour_tags: tuple) -> None:
    from clipserve.executors.dali import DaliExecutor

    colorspace, color_range, colour = colour_tags
    rgb = source_rgb(kind)
    path = encode_tagged(tmp_path / "vp9.webm", rgb, codec="libvpx-vp9", container_format="webm", colorspace=colorspace,
                         color_range=color_range, colour=colour)
    correct = frame_to_rgb(first_frame(path)).astype(np.float64)
    with DaliExecutor("cpu", batch_size=1, num_threads=1, colour_correction=False) as raw_executor:
        raw = raw_executor.decode_frames(path, [0, 2])[0].astype(np.float64)
    with DaliExecutor("cpu", batch_size=1, num_threads=1) as executor:
        corrected = executor.decode_frames(path, [0, 2])[0].astype(np.float64)
    raw_error, corrected_error = np.abs(raw - correct), np.abs(corrected - correct)
    assert 8 <= raw_error.max() <= DALI_RAW_BT709_MAX_ERROR_LEVELS, raw_error.max()  # still BT.601 inside DALI
    assert corrected_error.max() <= DALI_CORRECTED_MAX_ERROR_LEVELS, corrected_error.max()
    assert corrected_error.mean() < 1.0


def test_dali_cpu_clips_follow_the_declared_colour(tmp_path: Path) -> None:
    """The augmented path: centre-crop clips of a BT.709 VP9 video from DALI (corrected in the graph
    after the resampling) and from the PyAV executor agree within rounding; uncorrected they do not."""
    from clipserve.config import AugmentConfig, SamplingConfig
    from clipserve.datasets.index import build_index
    from clipserve.executors.dali import DaliExecutor
    from clipserve.executors.pyav import execute_plan
    from clipserve.plan import plan

    rgb = source_rgb("gradient")
    (tmp_path / "data" / "tagged").mkdir(parents=True)
    path = encode_tagged(tmp_path / "data" / "tagged" / "vp9.webm", rgb, codec="libvpx-vp9", container_format="webm",
                         colorspace=1, color_range=1, colour=YuvColour("bt709", False), num_frames=8)
    record = build_index(tmp_path / "data", dataset="folder", workers=0, progress=False).records[0]
    clip_plan = plan(record, 0, 0, 0, SamplingConfig(num_clips=1, frames_per_clip=4, frame_stride=1, target_fps=25),
                     AugmentConfig.evaluation(32))
    pyav = execute_plan(path, clip_plan).astype(np.float64)
    with DaliExecutor("cpu", batch_size=1, num_threads=1) as executor:
        dali = executor.execute_plan(path, clip_plan).astype(np.float64)
    with DaliExecutor("cpu", batch_size=1, num_threads=1, colour_correction=False) as raw_executor:
        raw = raw_executor.execute_plan(path, clip_plan).astype(np.float64)
    assert np.abs(dali - pyav).mean() < 1.0 and np.abs(dali - pyav).max() <= 4
    assert np.abs(raw - pyav).max() >= 8


@pytest.mark.needs_cuda
@pytest.mark.parametrize("colour_tags", [(1, 1, YuvColour("bt709", False)), (9, 1, YuvColour("bt2020", False))],
                         ids=["bt709", "bt2020"])
def test_dali_gpu_follows_the_declared_colour_on_h264(tmp_path: Path, colour_tags: tuple) -> None:
    """NVDEC + DALI's CUDA conversion (BT.601 too) with the executor's correction, on tagged H.264.
    H.264 chroma is left-sited and DALI samples it centre-sited, so gradients allow a little more."""
    from clipserve.executors.dali import DaliExecutor

    colorspace, color_range, colour = colour_tags
    rgb = source_rgb("gradient")
    path = encode_tagged(tmp_path / "h264.mp4", rgb, codec="libx264", container_format="mp4", colorspace=colorspace,
                         color_range=color_range, colour=colour)
    correct = frame_to_rgb(first_frame(path)).astype(np.float64)
    with DaliExecutor("gpu", batch_size=1, num_threads=1, colour_correction=False) as raw_executor:
        raw = raw_executor.decode_frames(path, [0, 2])[0].astype(np.float64)
    with DaliExecutor("gpu", batch_size=1, num_threads=1) as executor:
        corrected = executor.decode_frames(path, [0, 2])[0].astype(np.float64)
    raw_error, corrected_error = np.abs(raw - correct), np.abs(corrected - correct)
    assert raw_error.max() >= 8  # DALI's own conversion ignores the tag
    # not yet measured on a GPU: the correction must at least halve the error, and smooth content stay close
    assert corrected_error.mean() < 0.5 * raw_error.mean() and corrected_error.mean() < 2.0
