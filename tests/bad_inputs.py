"""The bad-input corpus: every awkward or broken file clipserve must survive, made at fixture time.

``write_corpus(root)`` encodes real videos with PyAV (tiny: 64×48 pixels, under two seconds, except
the 3840×2160 case where size is the point), derives the broken ones from them (cuts, renames,
noise) and returns one :class:`BadInput` per file. ``root`` becomes a ``folder``-adapter dataset:
every file lies in ``root / CLASS_NAME``. Nothing here is committed; building the corpus takes a
few seconds.

Each case states its contract in ``expected``: ``'ok'`` (the index accepts it and every executor
decodes it correctly) or ``'broken: <reason prefix>'`` (the index records it as broken with a
``broken_reason`` starting with that prefix, see ``clipserve.datasets.probe.BROKEN_CATEGORIES``).
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from clipserve.media.encode import encode_video, moving_square_frames
from tests.videos_index import remux, write_audio_only, write_png

CLASS_NAME = "bad"
"""The one class folder of the corpus dataset."""

WIDTH_PIXELS, HEIGHT_PIXELS = 64, 48
"""Size of the ordinary corpus videos."""
FPS = Fraction(30)
NUM_FRAMES = 45
"""Frames of the ordinary corpus videos (1.5 s at 30 fps)."""
REPLACEMENT_SIZE_PIXELS = (96, 64)
"""Width, height of the video that replaces ``replaced_on_disk.mp4``."""
REPLACEMENT_NUM_FRAMES = 20

EXPECTED_OUTCOMES: dict[str, str] = {
    "audio_only": "broken: no video stream (audio-only)",
    "av1": "ok",
    "faststart": "ok",
    "h264_10bit": "ok",
    "h264_444": "ok",
    "large_3840x2160": "ok",
    "moov_at_end": "ok",
    "moov_missing": "broken: truncated",
    "mpeg4_part2": "ok",
    "odd_17x9_h264_444": "ok",
    "odd_17x9_vp9": "ok",
    "one_frame": "ok",
    "png_renamed": "broken: not a video",
    "random_bytes": "broken: not a video",
    "replaced_on_disk": "ok",
    "resolution_change": "broken: resolution change",
    "resolution_change_vp9": "broken: resolution change",
    "rotated_90": "ok",
    "shorter_than_clip": "ok",
    "tiny_2x2": "ok",
    "truncated_in_ftyp": "broken: truncated",
    "truncated_in_moov": "broken: truncated",
    "truncated_last_byte": "broken: truncated",
    "truncated_mid_gop_10": "broken: truncated",
    "truncated_mid_gop_50": "broken: truncated",
    "truncated_mid_gop_90": "broken: truncated",
    "truncated_webm_header": "broken: truncated",
    "truncated_webm_mid_gop": "broken: truncated",
    "variable_frame_rate": "ok",
    "vp9": "ok",
    "vp9_444": "ok",
    "zero_byte": "broken: zero-byte file",
}
"""Case name → expected outcome, known before the corpus is written (so tests can be parametrized
at collection time); ``write_corpus`` returns exactly these cases."""


@dataclass(frozen=True)
class BadInput:
    """One corpus file and what clipserve must make of it."""

    name: str
    """Short case name, e.g. 'truncated_mid_gop'."""
    path: Path
    """Absolute path of the file (under ``root / CLASS_NAME``)."""
    expected: str
    """'ok' or 'broken: <reason prefix>' (the prefix the index's ``broken_reason`` starts with)."""
    description: str
    """What the file is, in a few words (the reliability table's first column)."""
    codec: str = ""
    """FFmpeg codec name the index must report for an 'ok' case."""
    pixel_format: str = ""
    """Pixel format the index must report for an 'ok' case ('' = not checked)."""
    upright_size_pixels: tuple[int, int] | None = None
    """(width, height) of the upright frames for an 'ok' case."""
    num_frames: int | None = None
    """Frames a full sequential decode gives, for an 'ok' case."""
    rotation_degrees: int = 0
    is_variable_frame_rate: bool = False

    @property
    def is_ok(self) -> bool:
        return self.expected == "ok"

    @property
    def broken_prefix(self) -> str:
        """The expected ``broken_reason`` prefix ('' for an 'ok' case)."""
        return self.expected.removeprefix("broken: ") if not self.is_ok else ""

    @property
    def relative_path(self) -> str:
        return f"{CLASS_NAME}/{self.path.name}"


def mp4_top_level_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """Top-level ISO-BMFF boxes of an MP4: ``(type, offset_bytes, size_bytes)`` in file order."""
    boxes: list[tuple[str, int, int]] = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif size == 0:
            size = len(data) - offset
        if size < 8:
            break
        boxes.append((kind.decode("latin-1"), offset, size))
        offset += size
    return boxes


def _box(data: bytes, kind: str) -> tuple[int, int]:
    for name, offset, size in mp4_top_level_boxes(data):
        if name == kind:
            return offset, size
    raise ValueError(f"no top-level {kind!r} box")


def _encode(path: Path, *, num_frames: int = NUM_FRAMES, size: tuple[int, int] = (WIDTH_PIXELS, HEIGHT_PIXELS),
            seed: int = 0, **options: object) -> Path:
    width, height = size
    encode_video(path, moving_square_frames(num_frames, width, height, seed=seed), **options)  # type: ignore[arg-type]
    return path


def _vfr_times_seconds(num_frames: int) -> list[float]:
    steps = np.random.default_rng(3).choice([1 / 60, 1 / 30, 1 / 15, 1 / 24], size=num_frames - 1)
    return [0.0] + [round(float(t), 4) for t in np.cumsum(steps)]


def _concatenate(parts: list[Path], target: Path, container_format: str) -> Path:
    """Stream-copy the video of several files into one, one after the other, without re-encoding.
    Each part starts with a keyframe carrying its own size (H.264: in-band SPS in MPEG-TS; VP9: the
    keyframe header), so the coded size changes where a part starts."""
    with av.open(str(target), "w", format=container_format) as out:
        copy = None
        offset = 0
        for part in parts:
            with av.open(str(part)) as source:
                stream = source.streams.video[0]
                if copy is None:
                    copy = out.add_stream_from_template(stream)
                first = last = None
                for packet in source.demux(stream):
                    if packet.dts is None:
                        continue
                    first = packet.pts if first is None else min(first, packet.pts)
                    last = packet.pts if last is None else max(last, packet.pts)
                    step = int(packet.duration or 0)
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = copy
                    out.mux(packet)
                offset += (last - first) + step  # type: ignore[operator]
    return target


def remux_container(source: Path, target: Path) -> Path:
    """Stream-copy the video of ``source`` into ``target`` (container from the extension), as
    ``ffmpeg -c copy`` would. AVI gets Annex B H.264 and keeps the source's fine time base, so its
    muxer writes empty "null frame" chunks between the frames (its header then counts time-base
    ticks, not frames): an AVI quirk real captures share."""
    from av.bitstream import BitStreamFilterContext

    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        annex_b = BitStreamFilterContext("h264_mp4toannexb", stream) \
            if target.suffix == ".avi" and stream.codec_context.name == "h264" else None
        for packet in src.demux(stream):
            if packet.dts is None:
                if annex_b is None:
                    continue
                packets = annex_b.filter(None)
            else:
                packets = annex_b.filter(packet) if annex_b is not None else [packet]
            for item in packets:
                item.stream = copy
                out.mux(item)
    return target


def replace_video(path: Path) -> None:
    """Replace ``path`` on disk (new inode, new size, new mtime) with a different, valid video of
    ``REPLACEMENT_SIZE_PIXELS`` and ``REPLACEMENT_NUM_FRAMES`` frames, as an atomic rename would."""
    staged = path.with_name(".staged-" + path.name)
    _encode(staged, num_frames=REPLACEMENT_NUM_FRAMES, size=REPLACEMENT_SIZE_PIXELS, seed=99)
    staged.replace(path)


def write_corpus(root: Path) -> list[BadInput]:
    """Write every case under ``root / CLASS_NAME`` and return their descriptors (sorted by name).

    Scratch files (the sources the cut files come from) go to ``root / '.sources'``, which the
    dataset adapters skip (hidden folder).
    """
    folder = root / CLASS_NAME
    sources = root / ".sources"
    folder.mkdir(parents=True, exist_ok=True)
    sources.mkdir(parents=True, exist_ok=True)
    size = (WIDTH_PIXELS, HEIGHT_PIXELS)
    cases: list[BadInput] = []

    def ok(name: str, filename: str, description: str, *, codec: str, pixel_format: str = "yuv420p",
           upright: tuple[int, int] = size, num_frames: int = NUM_FRAMES, **fields: object) -> None:
        cases.append(BadInput(name=name, path=folder / filename, expected="ok", description=description, codec=codec,
                              pixel_format=pixel_format, upright_size_pixels=upright, num_frames=num_frames,
                              **fields))  # type: ignore[arg-type]

    def broken(name: str, filename: str, reason: str, description: str) -> None:
        cases.append(BadInput(name=name, path=folder / filename, expected=f"broken: {reason}", description=description))

    # -- sources: one GOP, B-frames, AAC audio; the default muxer puts moov after mdat
    moov_at_end = _encode(folder / "moov_at_end.mp4", fps=FPS, audio_sample_rate_hz=16000,
                          extra_options={"x264-params": "scenecut=0"})  # exactly one GOP
    ok("moov_at_end", "moov_at_end.mp4", "H.264 + AAC, moov atom after mdat (PyAV's default)", codec="h264")
    faststart = remux(moov_at_end, folder / "faststart.mp4", faststart=True)
    ok("faststart", "faststart.mp4", "H.264, moov atom before mdat (movflags=faststart)", codec="h264")

    # -- not videos at all
    (folder / "zero_byte.mp4").write_bytes(b"")
    broken("zero_byte", "zero_byte.mp4", "zero-byte file", "empty file (0 bytes)")
    (folder / "random_bytes.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    broken("random_bytes", "random_bytes.mp4", "not a video", "20 kB of random bytes named .mp4")
    write_png(folder / "png_renamed.mp4")
    broken("png_renamed", "png_renamed.mp4", "not a video", "a PNG image renamed .mp4")
    write_audio_only(folder / "audio_only.mp4")
    broken("audio_only", "audio_only.mp4", "no video stream (audio-only)", "MP4 with one AAC track, no video")

    # -- cut files
    fast_bytes = faststart.read_bytes()
    moov_offset, moov_size = _box(fast_bytes, "moov")
    mdat_offset, mdat_size = _box(fast_bytes, "mdat")
    (folder / "truncated_in_ftyp.mp4").write_bytes(fast_bytes[:20])
    broken("truncated_in_ftyp", "truncated_in_ftyp.mp4", "truncated", "faststart MP4 cut after 20 bytes (inside ftyp)")
    (folder / "truncated_in_moov.mp4").write_bytes(fast_bytes[: moov_offset + moov_size // 2])
    broken("truncated_in_moov", "truncated_in_moov.mp4", "truncated", "faststart MP4 cut in the middle of the moov header")
    for percent in (10, 50, 90):
        cut = mdat_offset + 8 + (mdat_size - 8) * percent // 100
        name = f"truncated_mid_gop_{percent}"
        (folder / f"{name}.mp4").write_bytes(fast_bytes[:cut])
        broken(name, f"{name}.mp4", "truncated", f"faststart MP4 cut at {percent}% of its one-GOP mdat")
    (folder / "truncated_last_byte.mp4").write_bytes(fast_bytes[:-1])
    broken("truncated_last_byte", "truncated_last_byte.mp4", "truncated", "faststart MP4 missing its last byte")
    end_bytes = moov_at_end.read_bytes()
    end_moov_offset, _ = _box(end_bytes, "moov")
    (folder / "moov_missing.mp4").write_bytes(end_bytes[:end_moov_offset])
    broken("moov_missing", "moov_missing.mp4", "truncated", "moov-at-end MP4 cut just before its moov atom")
    vp9 = _encode(sources / "vp9_source.webm", codec="vp9", keyframe_interval_frames=15, fps=FPS)
    vp9_bytes = vp9.read_bytes()
    (folder / "truncated_mid_gop.webm").write_bytes(vp9_bytes[: int(len(vp9_bytes) * 0.6)])
    broken("truncated_webm_mid_gop", "truncated_mid_gop.webm", "truncated", "VP9 WebM cut at 60% (mid-GOP)")
    (folder / "truncated_header.webm").write_bytes(vp9_bytes[:100])
    broken("truncated_webm_header", "truncated_header.webm", "truncated", "VP9 WebM cut after 100 bytes (EBML header)")

    # -- short and odd timing
    _encode(folder / "one_frame.mp4", num_frames=1, fps=FPS)
    ok("one_frame", "one_frame.mp4", "H.264, a single frame", codec="h264", num_frames=1)
    _encode(folder / "shorter_than_clip.mp4", num_frames=6, fps=FPS)
    ok("shorter_than_clip", "shorter_than_clip.mp4", "H.264, 6 frames (0.2 s): shorter than one clip",
       codec="h264", num_frames=6)
    _encode(folder / "variable_frame_rate.mp4", num_frames=NUM_FRAMES, frame_times_seconds=_vfr_times_seconds(NUM_FRAMES))
    ok("variable_frame_rate", "variable_frame_rate.mp4", "H.264, variable frame rate (15–60 fps steps)",
       codec="h264", is_variable_frame_rate=True)
    remux(moov_at_end, folder / "rotated_90.mp4", rotation_degrees=90)
    ok("rotated_90", "rotated_90.mp4", "H.264 with a 90° display matrix", codec="h264",
       upright=(HEIGHT_PIXELS, WIDTH_PIXELS), rotation_degrees=90)

    # -- sizes and pixel formats
    _encode(folder / "odd_17x9_yuv444p.mp4", size=(17, 9), pixel_format="yuv444p")
    ok("odd_17x9_h264_444", "odd_17x9_yuv444p.mp4", "H.264 4:4:4, 17×9 pixels (odd size)", codec="h264",
       pixel_format="yuv444p", upright=(17, 9))
    _encode(folder / "odd_17x9.webm", size=(17, 9), codec="vp9")
    ok("odd_17x9_vp9", "odd_17x9.webm", "VP9 4:2:0, 17×9 pixels (odd size)", codec="vp9", upright=(17, 9))
    _encode(folder / "tiny_2x2.mp4", size=(2, 2))
    ok("tiny_2x2", "tiny_2x2.mp4", "H.264 4:2:0, 2×2 pixels", codec="h264", upright=(2, 2))
    _encode(folder / "large_3840x2160.mp4", num_frames=4, size=(3840, 2160), extra_options={"preset": "ultrafast"})
    ok("large_3840x2160", "large_3840x2160.mp4", "H.264, 3840×2160, 4 frames", codec="h264",
       upright=(3840, 2160), num_frames=4)
    _encode(folder / "yuv420p10le.mp4", pixel_format="yuv420p10le")
    ok("h264_10bit", "yuv420p10le.mp4", "H.264 High 10, yuv420p10le", codec="h264", pixel_format="yuv420p10le")
    _encode(folder / "yuv444p.mp4", pixel_format="yuv444p")
    ok("h264_444", "yuv444p.mp4", "H.264 High 4:4:4, yuv444p", codec="h264", pixel_format="yuv444p")
    # (this build's libvpx-vp9 has no 10-bit formats, libx264 covers 10-bit above)
    _encode(folder / "vp9_yuv444p.webm", codec="vp9", pixel_format="yuv444p")
    ok("vp9_444", "vp9_yuv444p.webm", "VP9 profile 1, yuv444p", codec="vp9", pixel_format="yuv444p")

    # -- other codecs
    _encode(folder / "mpeg4_part2.mp4", codec="mpeg4", keyframe_interval_frames=12)
    ok("mpeg4_part2", "mpeg4_part2.mp4", "MPEG-4 Part 2 (mpeg4 encoder) in MP4", codec="mpeg4")
    shutil.copyfile(vp9, folder / "vp9.webm")
    ok("vp9", "vp9.webm", "VP9 4:2:0 in WebM, keyframe every 15 frames", codec="vp9")
    _encode(folder / "av1.mp4", codec="av1", num_frames=20)
    ok("av1", "av1.mp4", "AV1 (SVT-AV1) in MP4", codec="av1", num_frames=20)

    # -- a resolution change mid-stream: two H.264 streams of different sizes, one MPEG-TS
    first = _encode(sources / "part_a.ts", num_frames=20, size=(64, 48))
    second = _encode(sources / "part_b.ts", num_frames=20, size=(96, 64), seed=1)
    _concatenate([first, second], folder / "resolution_change.ts", "mpegts")
    broken("resolution_change", "resolution_change.ts", "resolution change",
           "H.264 in MPEG-TS whose coded size changes 64×48 → 96×64 at frame 20")
    first = _encode(sources / "part_a.webm", num_frames=20, size=(64, 48), codec="vp9")
    second = _encode(sources / "part_b.webm", num_frames=20, size=(96, 64), codec="vp9", seed=1)
    _concatenate([first, second], folder / "resolution_change.webm", "webm")
    broken("resolution_change_vp9", "resolution_change.webm", "resolution change",
           "VP9 in WebM whose coded size changes 64×48 → 96×64 at frame 20 (a keyframe)")

    # -- replaced on disk between index builds (the test calls replace_video)
    _encode(folder / "replaced_on_disk.mp4", seed=5)
    ok("replaced_on_disk", "replaced_on_disk.mp4", "H.264 replaced by another video (96×64, 20 frames) after indexing",
       codec="h264")
    return sorted(cases, key=lambda c: c.name)


# ----------------------------------------------------------------------------- checks run in a child process
# The tests call these through ``tests.test_bad_inputs.IsolatedWorker`` so a decoder that crashes or
# hangs on a corpus file fails one test with a message instead of killing the test run.


def reference_frames(path: str | Path, frame_indices: list[int], rotation_degrees: int = 0) -> dict[int, np.ndarray]:
    """The requested frames of a plain sequential PyAV decode (frame i = i-th frame out), converted
    with the executors' one RGB conversion and made upright: ``{index: (H, W, 3) uint8}``."""
    from clipserve.executors.yuv import frame_to_rgb, rotate_upright

    wanted = set(int(i) for i in frame_indices)
    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = rotate_upright(frame_to_rgb(frame), rotation_degrees)
            if i >= max(wanted):
                break
    return out


def pyav_serve_check(path: str, plans: list) -> dict[str, object]:
    """Execute ``plans`` (``ClipPlan``) with the PyAV executor and compare with a sequential decode.

    Returns ``{'problems': [...], 'clip_shapes': [...], 'frame_shape': (H, W, 3)}``; no problems
    means: ``execute_plan`` gave ``(ρ, C, T, S, S)`` uint8 equal to ``augment_clip`` of the clip
    regions, every region equals the crop of the reference frames, and ``decode_frames`` equals the
    reference frames.
    """
    from clipserve.executors.augment import augment_clip
    from clipserve.executors.pyav import decode_clip_regions, decode_frames, execute_plan

    problems: list[str] = []
    shapes: list[tuple[int, ...]] = []
    frame_shape: tuple[int, ...] = ()
    for plan in plans:
        indices = sorted(set(plan.all_frame_indices))
        reference = reference_frames(path, indices, plan.rotation_degrees)
        missing = [i for i in indices if i not in reference]
        if missing:
            problems.append(f"epoch {plan.epoch}: the sequential decode has no frames {missing}")
            continue
        clips = execute_plan(path, plan)
        shapes.append(tuple(clips.shape))
        size = plan.clips[0].augment.output_size_pixels
        expected_shape = (len(plan.clips), 3, len(plan.clips[0].frame_indices), size, size)
        if clips.shape != expected_shape or clips.dtype != np.uint8:
            problems.append(f"epoch {plan.epoch}: clips {clips.shape} {clips.dtype}, expected {expected_shape} uint8")
        regions = decode_clip_regions(path, plan)
        for c, (clip, region) in enumerate(zip(plan.clips, regions)):
            a = clip.augment
            expected = np.stack([reference[i][a.crop_top_pixels : a.crop_top_pixels + a.crop_height_pixels,
                                              a.crop_left_pixels : a.crop_left_pixels + a.crop_width_pixels]
                                 for i in clip.frame_indices])
            if region.shape != expected.shape or not np.array_equal(region, expected):
                problems.append(f"epoch {plan.epoch} clip {c}: crop region differs from the sequential decode")
            elif not np.array_equal(augment_clip(region, a), clips[c]):
                problems.append(f"epoch {plan.epoch} clip {c}: clip differs from augment_clip of its region")
        frames = decode_frames(path, indices, rotation_degrees=plan.rotation_degrees)
        frame_shape = tuple(frames.shape[1:])
        bad = [i for n, i in enumerate(indices) if not np.array_equal(frames[n], reference[i])]
        if bad:
            problems.append(f"epoch {plan.epoch}: decode_frames differs from the sequential decode at {bad}")
    return {"problems": problems, "clip_shapes": shapes, "frame_shape": frame_shape}


def pyav_failure_check(path: str, frame_indices: list[int], plan: object | None = None) -> list[str]:
    """Outcomes of ``decode_frames(path, frame_indices)`` and, given a plan, ``execute_plan``: each
    'ok <shape>', 'DecodeError: <message>' or 'UNEXPECTED <type>: <message>' (anything else raised)."""
    from clipserve.errors import DecodeError
    from clipserve.executors.pyav import decode_frames, execute_plan

    outcomes: list[str] = []
    calls = [lambda: decode_frames(path, frame_indices)]
    if plan is not None:
        calls.append(lambda: execute_plan(path, plan))  # type: ignore[arg-type]
    for call in calls:
        try:
            outcomes.append(f"ok {tuple(call().shape)}")
        except DecodeError as error:
            outcomes.append(f"DecodeError: {error}")
        except Exception as error:  # the contract says only DecodeError: report, do not raise
            outcomes.append(f"UNEXPECTED {type(error).__name__}: {error}")
    return outcomes


def dali_check(paths: list[str], plans: list, device: str = "cpu") -> dict[str, object]:
    """Run ``DaliExecutor(device).execute_batch`` over ``paths`` twice (the second run shows that a
    failure left the executor usable) and compare with the PyAV executor's clips.

    Returns ``{'shape': ..., 'failures': {position: reason}, 'mean_abs_diff': {position: float},
    'second_run_failures': {position: reason}}`` (differences for the positions both executors served).
    """
    from clipserve.errors import DecodeError
    from clipserve.executors.dali import DaliExecutor
    from clipserve.executors.pyav import execute_plan

    with DaliExecutor(device, batch_size=4, num_threads=1) as executor:  # type: ignore[arg-type]
        clips, failures = executor.execute_batch([Path(p) for p in paths], plans)
        _, second_failures = executor.execute_batch([Path(p) for p in paths], plans)
    if device == "gpu":
        clips = clips.cpu().numpy()
    differences: dict[int, float] = {}
    for b, (path, plan) in enumerate(zip(paths, plans)):
        if b in failures:
            continue
        try:
            expected = execute_plan(path, plan)
        except DecodeError:
            continue
        differences[b] = float(np.abs(clips[b].astype(np.int16) - expected.astype(np.int16)).mean())
    return {"shape": tuple(clips.shape), "failures": dict(failures), "mean_abs_diff": differences,
            "second_run_failures": dict(second_failures)}
