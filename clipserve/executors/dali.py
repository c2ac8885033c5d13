"""DALI executor: decode each video once (NVDEC on a GPU, FFmpeg on the CPU for VP8/VP9/MJPEG) and
augment its ρ clips in one DALI graph (``clipserve.executors.dali_pipeline``).

``DaliExecutor.execute_batch(paths, plans)`` returns ``(clips, failures)``: ``clips`` is
``(B, ρ, C, T, S, S)`` uint8 (a NumPy array on the CPU backend, a CUDA ``torch.Tensor`` on the GPU
backend: the batch never leaves the device), ``failures`` maps a batch position to the reason its
video could not be used (its row of ``clips`` is zeros; the pool substitutes it as for PyAV).

Bad files never kill the pipeline: every file is first probed with PyAV (readable, a video stream, a
codec this backend decodes, a first frame that decodes); if DALI still fails on a batch, the
pipeline is rebuilt and the batch's videos are retried one by one, so only the culprits fail.

Colour: DALI converts YUV to RGB with BT.601 coefficients whatever the stream declares (it does
follow the range: full-range streams are converted as full-range BT.601), with *bilinear*
(centre-sited) chroma upsampling. swscale with ``BILINEAR | FULL_CHR_H_INT | ACCURATE_RND`` gives the
same pixels on BT.601 streams, and so does the PyAV executor's default conversion
(``clipserve.executors.yuv``, ``chroma="bilinear"``). The PyAV executor converts with the stream's
declared matrix (BT.709, BT.2020, ...), so the executor corrects DALI's RGB in the graph: the
stream's tags are read when the file is opened for ``probe_video`` (``_check_video``,
no decoding), and ``[R', G', B'] = M_declared · M_601⁻¹ · [R, G, B, 1]``
(``yuv.bt601_rgb_correction``) is applied to the float frames right after ``fn.warp_affine`` (an
affine map in RGB commutes with the convex bilinear resampling), before the colour jitter.
Measured on the CPU backend (DALI 2.4; VP9 WebM 96×64 encoded from known RGB; error vs the PyAV
executor's conversion of the same frame, in 8-bit levels, ``tests/test_colour.py``):

==================  ========================  ===================
stream              DALI's own (max / mean)   corrected (max / mean)
==================  ========================  ===================
BT.709 solid        20 / 11.3                 0 / 0.00
BT.709 gradients    30 / 5.8                  2 / 0.45
BT.709 full range   30 / 5.8                  2 / 0.38
BT.2020 gradients   23 / 4.1                  2 / 0.48
BT.709 noise        18 / 2.5                  10 / 0.45 (BT.601 clipped out-of-gamut values first)
BT.601 / untagged   2 / 0.40                  unchanged (no correction)
==================  ========================  ===================

The NVDEC (GPU) path gets the same correction in its graph: DALI's CUDA conversion
(``dali/operators/video/color_space.cu``) is also BT.601, limited range
(``itu_r_bt_601::ycbcr_to_rgb``) or full range (``jpeg::ycbcr_to_rgb``), with bilinear chroma; it was
not measured here (no GPU in this session). ``DaliExecutor(colour_correction=False)`` gives DALI's own RGB.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from clipserve.errors import DecodeError, UnsupportedCodecError
from clipserve.executors.backend import dali_accepts, unsupported_codec_message
from clipserve.executors.dali_pipeline import (
    DECODE_INPUT_NAMES,
    INPUT_NAMES,
    clip_pipeline,
    colour_input,
    decode_pipeline,
    plan_shape,
    sample_inputs,
    sorted_frames,
)
from clipserve.executors.yuv import UNTAGGED_COLOUR, bt601_rgb_correction, declared_colour
from clipserve.media.packet_scan import PacketScanError, scan_packets
from clipserve.plan_models import ClipPlan

__all__ = ["DaliExecutor", "decode_frames", "probe_video"]

Device = Literal["cpu", "gpu"]


def probe_video(data: bytes | np.ndarray, device: Device) -> str:
    """Check, cheaply with PyAV, that DALI can be given these bytes; return the codec name.

    Opens the container from memory, requires a video stream whose codec this DALI backend decodes
    (``dali_accepts``: DALI itself decides, on a tiny sample of the codec), decodes its first frame,
    and refuses files whose packet timestamps cannot identify frames (``clipserve.media.packet_scan``:
    DALI's decoder numbers frames by packet pts, so it would return wrong frames for them).

    Raises:
        UnsupportedCodecError: the codec is not decodable by this backend.
        DecodeError: not a readable video (empty, truncated header, no video stream, no frame).
    """
    return _check_video(data, device)[0]


def _check_video(data: bytes | np.ndarray, device: Device) -> tuple[str, np.ndarray | None]:
    """``probe_video``'s checks; returns the codec name and the 3×4 RGB correction for the colour the
    stream declares (``yuv.bt601_rgb_correction``; None when that is BT.601, DALI's own matrix),
    read from the tags of the same open, without decoding."""
    import io

    raw = bytes(data)
    if not raw:
        raise DecodeError("empty file (0 bytes)")
    try:
        with av.open(io.BytesIO(raw), mode="r") as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            codec = context.name
            colour = declared_colour(int(context.colorspace), int(context.color_range), context.pix_fmt or "")
            if not dali_accepts(codec, device):
                raise UnsupportedCodecError(unsupported_codec_message(codec, "dali-gpu" if device == "gpu" else "dali-cpu"))
            for _ in container.decode(stream):
                break
            else:
                raise DecodeError("no decodable video frame")
        with av.open(io.BytesIO(raw), mode="r") as container:
            # the scanner the index and the PyAV executor use: DALI finds frames by packet pts
            scan = scan_packets(container, container.streams.video[0])
        if scan.frame_access != "pts":
            raise DecodeError(f"packet timestamps do not identify frames ({scan.access_problem}): DALI would index "
                              "frames by them; the PyAV executor (--backend pyav) serves this file exactly")
        return codec, (None if colour.matrix == UNTAGGED_COLOUR.matrix else bt601_rgb_correction(colour))
    except DecodeError:
        raise
    except PacketScanError as exc:
        raise DecodeError(f"unreadable video: {exc}") from exc
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise DecodeError(f"unreadable video: {exc}") from exc


def _read_bytes(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DecodeError(f"cannot read {path}: {exc}") from exc


def _rotate_upright(frames: np.ndarray, rotation_degrees: int) -> np.ndarray:
    """Rotate ``(N, H, W, 3)`` counter-clockwise by ``rotation_degrees`` (as the PyAV executor)."""
    if rotation_degrees % 90:
        raise ValueError(f"rotation_degrees ({rotation_degrees}) must be a multiple of 90 (0, 90, 180 or 270)")
    turns = (rotation_degrees // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=turns, axes=(1, 2))) if turns else frames


class DaliExecutor:
    """A ``BatchExecutor`` on DALI: ``execute_batch(paths, plans) -> (clips, failures)``.

    Args:
        device: 'gpu' (NVDEC decode, augmentation and output on CUDA device ``device_id``) or
            'cpu' (DALI's CPU decoder: VP8, VP9 and MJPEG only).
        batch_size: most videos per DALI run; longer batches are run in chunks.
        num_threads: DALI CPU worker threads.
        device_id: CUDA device for ``device='gpu'``.
        colour_correction: turn DALI's BT.601 RGB into the stream's declared matrix (BT.709,
            BT.2020, ...) in the graph; False: DALI's own conversion, whatever the tags.

    One executor is used by one thread at a time (a lock serialises calls). Pipelines are built
    lazily, one per (ρ, T, S) seen.
    """

    def __init__(self, device: Device = "gpu", batch_size: int = 8, num_threads: int = 2, device_id: int = 0,
                 *, colour_correction: bool = True) -> None:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device ({device!r}) must be 'cpu' or 'gpu'")
        if batch_size < 1 or num_threads < 1:
            raise ValueError(f"batch_size ({batch_size}) and num_threads ({num_threads}) must be >= 1")
        self.device: Device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device_id = device_id
        self.colour_correction = colour_correction
        """Correct DALI's BT.601 RGB to the matrix each stream declares (module docstring, "Colour")."""
        self._pipelines: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self.pipeline_rebuilds = 0
        """How many times a pipeline was rebuilt after DALI failed on a batch."""

    # ------------------------------------------------------------------ pipelines
    def _pipeline(self, key: tuple[Any, ...]) -> Any:
        pipe = self._pipelines.get(key)
        if pipe is None:
            common = dict(
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                device_id=self.device_id if self.device == "gpu" else None,
                prefetch_queue_depth=1,
            )
            if key[0] == "decode":
                pipe = decode_pipeline(self.device, **common)
            else:
                _, num_clips, length, size = key
                pipe = clip_pipeline(self.device, num_clips, length, size, **common)
            pipe.build()
            self._pipelines[key] = pipe
        return pipe

    def _drop(self, key: tuple[Any, ...]) -> None:
        pipe = self._pipelines.pop(key, None)
        self.pipeline_rebuilds += 1
        del pipe

    def _run(self, key: tuple[Any, ...], names: Sequence[str], samples: list[tuple[np.ndarray, ...]]) -> Any:
        pipe = self._pipeline(key)
        for k, name in enumerate(names):
            pipe.feed_input(name, [s[k] for s in samples])
        (out,) = pipe.run()
        return out

    def _run_resilient(
        self, key: tuple[Any, ...], names: Sequence[str], samples: list[tuple[np.ndarray, ...]]
    ) -> tuple[list[Any | None], dict[int, str]]:
        """Run ``samples`` in chunks of ``batch_size``; return one output per sample (None where it failed)."""
        results: list[Any | None] = [None] * len(samples)
        failures: dict[int, str] = {}
        for start in range(0, len(samples), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(samples))))
            try:
                out = self._run(key, names, [samples[i] for i in chunk])
                for j, i in enumerate(chunk):
                    results[i] = self._sample(out, j)
                continue
            except Exception:  # DALI raises RuntimeError subclasses; rebuild, isolate the culprit(s)
                self._drop(key)
            for i in chunk:  # one by one on a fresh pipeline: only the videos that fail alone fail
                try:
                    results[i] = self._sample(self._run(key, names, [samples[i]]), 0)
                except Exception as exc:
                    self._drop(key)
                    failures[i] = f"DALI could not decode it: {_first_line(exc)}"
        return results, failures

    def _sample(self, out: Any, j: int) -> Any:
        """Sample ``j`` of a DALI output: a NumPy array (CPU) or a CUDA torch tensor (GPU), owned by us."""
        if self.device == "cpu":
            return np.array(out.at(j), copy=True)
        return _tensor_gpu_to_torch(out[j], self.device_id)

    @classmethod
    def for_single_video(cls, backend: str = "dali", *, device: Device | None = None) -> "DaliExecutor":
        """A one-video executor (batch 1, one thread) for ``clipserve plan``: ``backend`` is 'dali'
        (device from ``dali_device()``), 'dali-gpu' or 'dali-cpu'."""
        from clipserve.executors.backend import dali_device

        if device is None:
            device = {"dali-gpu": "gpu", "dali-cpu": "cpu"}.get(backend) or dali_device()
        return cls(device, batch_size=1, num_threads=1)

    def execute_plan(self, source: str | Path, plan: ClipPlan) -> np.ndarray:
        """One video's ``(ρ, C, T, S, S)`` uint8 clips in host memory (same contract as the PyAV executor's).

        Raises:
            DecodeError: the video could not be decoded (the reason as ``execute_batch`` reports it).
        """
        clips, failures = self.execute_batch([Path(source)], [plan])
        if failures:
            raise DecodeError(f"{source}: {failures[0]}")
        return clips[0] if self.device == "cpu" else clips[0].cpu().numpy()

    def close(self) -> None:
        """Release the DALI pipelines (their threads and buffers); the executor can still be used after."""
        with self._lock:
            self._pipelines.clear()

    def __enter__(self) -> "DaliExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ BatchExecutor
    def execute_batch(self, paths: list[Path], plans: list[ClipPlan]) -> tuple[Any, dict[int, str]]:
        """Decode and augment one batch: video ``paths[b]`` with ``plans[b]``.

        Returns:
            ``clips`` ``(B, ρ, C, T, S, S)`` uint8 (NumPy on the CPU backend, a CUDA torch tensor
            on the GPU backend; rows of failed videos are zeros) and ``failures``
            ``{batch position: reason}``.

        Raises:
            ValueError: ``paths`` and ``plans`` differ in length, the batch is empty, or the plans
                disagree on (ρ, T, S).
        """
        if len(paths) != len(plans) or not plans:
            raise ValueError(f"need as many paths as plans (>= 1), got {len(paths)} paths and {len(plans)} plans")
        shapes = {plan_shape(p) for p in plans}
        if len(shapes) != 1:
            raise ValueError(f"all plans of a batch need the same (ρ, T, S), got {sorted(shapes)}")
        num_clips, length, size = shapes.pop()
        with self._lock:
            failures: dict[int, str] = {}
            good: list[int] = []
            samples: list[tuple[np.ndarray, ...]] = []
            for b, (path, plan) in enumerate(zip(paths, plans)):
                try:
                    data = _read_bytes(Path(path))
                    samples.append(sample_inputs(data, plan, self._correction(data)))
                    good.append(b)
                except (DecodeError, ValueError) as exc:
                    failures[b] = str(exc)
            key = ("clips", num_clips, length, size)
            results, run_failures = self._run_resilient(key, INPUT_NAMES, samples) if samples else ([], {})
            for i, reason in run_failures.items():
                failures[good[i]] = reason
            shape = (len(plans), num_clips, 3, length, size, size)
            if self.device == "cpu":
                clips: Any = np.zeros(shape, dtype=np.uint8)
            else:
                import torch

                clips = torch.zeros(shape, dtype=torch.uint8, device=f"cuda:{self.device_id}")
            for i, result in enumerate(results):
                if result is not None:
                    clips[good[i]] = result
            return clips, failures

    def _correction(self, data: np.ndarray) -> np.ndarray | None:
        """``probe_video``'s checks (raise ``DecodeError`` / ``UnsupportedCodecError``), then the
        colour correction this executor applies (None: DALI's own conversion)."""
        correction = _check_video(data, self.device)[1]
        return correction if self.colour_correction else None

    def decode_frames(self, source: str | Path, frame_indices: Sequence[int], *, rotation_degrees: int = 0) -> np.ndarray:
        """Decode frames with DALI, same contract as ``clipserve.executors.pyav.decode_frames``.

        Returns:
            ``(N, H, W, 3)`` uint8 RGB upright frames (host memory), frame n = ``frame_indices[n]``.

        Raises:
            DecodeError: unreadable file, unsupported codec, or an index past the last frame.
        """
        if any(int(i) < 0 for i in frame_indices):
            raise DecodeError(f"frame indices must be >= 0, got {min(frame_indices)}")
        if len(frame_indices) == 0:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        with self._lock:
            data = _read_bytes(Path(source))
            sample = (data, *sorted_frames(frame_indices), colour_input(self._correction(data)))
            results, failures = self._run_resilient(("decode",), DECODE_INPUT_NAMES, [sample])
            if failures:
                raise DecodeError(f"{source}: {failures[0]}")
            frames = results[0]
            if self.device == "gpu":
                frames = frames.cpu().numpy()
            return _rotate_upright(frames, rotation_degrees)


def _first_line(exc: BaseException) -> str:
    """The informative line of a DALI error (the one after 'encountered:'), at most 300 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for k, line in enumerate(lines[:-1]):
        if line == "encountered:":
            return lines[k + 1][:300]
    useful = [line for line in lines if not line.startswith(("Critical error", "Current pipeline object"))]
    return (useful or lines or [type(exc).__name__])[0][:300]


def _tensor_gpu_to_torch(tensor: Any, device_id: int) -> Any:
    """Copy one DALI GPU tensor into a new CUDA torch tensor, device to device (no host round trip)."""
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray

    out = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=f"cuda:{device_id}")
    feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device_id))
    return out


_default_executors: dict[str, DaliExecutor] = {}
_default_lock = threading.Lock()


def decode_frames(
    source: str | Path, frame_indices: Sequence[int], *, rotation_degrees: int = 0, device: Device | None = None
) -> np.ndarray:
    """Decode the given frames with DALI as upright RGB (same contract as the PyAV executor's).

    Args:
        device: 'gpu' or 'cpu'; None: 'gpu' when a CUDA device is usable, else 'cpu'.

    Returns:
        ``(N, H, W, 3)`` uint8, frame n = frame ``frame_indices[n]`` (presentation order).
    """
    from clipserve.executors.backend import cuda_usable

    chosen: Device = device if device is not None else ("gpu" if cuda_usable() else "cpu")
    with _default_lock:
        executor = _default_executors.get(chosen)
        if executor is None:
            executor = _default_executors[chosen] = DaliExecutor(chosen, batch_size=1, num_threads=1)
    return executor.decode_frames(source, frame_indices, rotation_degrees=rotation_degrees)
