"""Building a sample set: encode the videos (process pool), write the K400 layout, the CSVs and
the manifest. Idempotent and resumable; see :func:`build_sample`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import av
from pydantic import BaseModel

from clipserve.errors import ConfigError, DatasetError
from clipserve.media.encode import encode_video
from clipserve.sample.renderers import render_frames
from clipserve.sample.spec import ANNOTATION_HEADER, MANIFEST_NAME, SampleSpec, SampleVideo, make_sample_spec

_PARTIAL_DIR = ".partial"



def encode_sample_video(video: SampleVideo, path: str | Path) -> int:
    """Render and encode ``video`` into ``path``; return its size in bytes.

    H.264: libx264 (B-frames on, keyframe interval ``video.keyframe_interval_frames``); VP9:
    libvpx-vp9. One encoder thread: parallelism comes from encoding several videos at once.
    """
    encode_video(
        path,
        render_frames(video, pixel_format="yuv420p"),
        fps=video.fps,
        codec=video.codec,
        keyframe_interval_frames=video.keyframe_interval_frames,
        audio_sample_rate_hz=44100 if video.has_audio else None,
        extra_options={"threads": "1"},
        deterministic=True,
        input_format="yuv420p",
    )
    return Path(path).stat().st_size


def _encode_into(root: str, video: SampleVideo) -> int:
    """Worker task: encode into ``root/.partial/`` then move into place atomically, so an
    interrupted build never leaves a truncated file at a final path."""
    final = Path(root) / video.relative_path
    partial = Path(root) / _PARTIAL_DIR / f"{video.youtube_id}{final.suffix}"
    return encode_atomically(final, partial, lambda path: encode_sample_video(video, path))


def encode_atomically(final: Path, partial: Path, encode: Callable[[Path], int]) -> int:
    """Run ``encode(partial)`` (returns bytes written), then move ``partial`` to ``final`` atomically,
    so an interrupted build never leaves a truncated file at a final path. Returns the size in bytes.

    Raises:
        DatasetError: the file cannot be written (disk full, read-only folder, encoder failure).
    """
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        size = encode(partial)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
    except (OSError, av.error.FFmpegError) as exc:  # disk full, read-only folder, encoder failure
        raise DatasetError(f"cannot write {final}: {exc}") from None
    return size


class SampleBuildResult(BaseModel):
    """What :func:`build_sample` did."""

    root: str
    num_videos: int
    """Videos in the dataset."""
    num_encoded: int
    """Videos encoded by this call (0 when the dataset was already complete)."""
    already_complete: bool
    total_video_seconds: float
    """Summed duration of all videos in the dataset, seconds."""
    total_bytes: int
    elapsed_seconds: float
    workers: int

    def summary(self) -> str:
        """One line for people."""
        if self.already_complete:
            return (f"sample dataset at {self.root} is complete ({self.num_videos} videos, "
                    f"{self.total_video_seconds / 3600:.2f} h); nothing to do (use --force to rebuild)")
        return (f"made {self.num_encoded} of {self.num_videos} videos ({self.total_video_seconds / 3600:.2f} h "
                f"of video, {self.total_bytes / 1e6:.1f} MB) in {self.elapsed_seconds:.1f} s "
                f"with {self.workers} worker(s) -> {self.root}")


def missing_videos(root: str | Path, spec: SampleSpec) -> list[SampleVideo]:
    """Videos of ``spec`` whose file under ``root`` is absent or empty."""
    root = Path(root)
    out = []
    for video in spec.videos:
        path = root / video.relative_path
        if not path.is_file() or path.stat().st_size == 0:
            out.append(video)
    return out


def _read_manifest(root: Path) -> dict[str, object] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); remove it or use --force") from exc
    return data if isinstance(data, dict) else None


def _write_annotations(root: Path, spec: SampleSpec) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        tmp = root / "annotations" / f".{split}.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(ANNOTATION_HEADER)
            writer.writerows(spec.rows(split))
        os.replace(tmp, root / "annotations" / f"{split}.csv")


def _annotations_current(root: Path, spec: SampleSpec) -> bool:
    for split in ("train", "val"):
        path = root / "annotations" / f"{split}.csv"
        try:
            with path.open(newline="") as f:
                rows = [tuple(r) for r in csv.reader(f)]
        except OSError:
            return False
        expected = [ANNOTATION_HEADER] + [tuple(str(x) for x in row) for row in spec.rows(split)]
        if rows != expected:
            return False
    return True


def _remove_previous(root: Path, manifest: dict[str, object] | None) -> None:
    """--force: delete what a previous make-sample wrote (listed in its manifest), nothing else."""
    if manifest and isinstance(manifest.get("relative_paths"), list):
        for rel in manifest["relative_paths"]:  # type: ignore[union-attr]
            path = (root / str(rel)).resolve()
            if root.resolve() in path.parents and path.is_file():
                path.unlink()
    for name in ("annotations/train.csv", "annotations/val.csv", MANIFEST_NAME):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / _PARTIAL_DIR, ignore_errors=True)
    for split in ("train", "val"):  # prune class folders left empty
        for folder in sorted((root / split).glob("*"), reverse=True) if (root / split).is_dir() else []:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def default_workers() -> int:
    """Usable CPU cores of this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def build_sample(
    root: str | Path,
    spec: SampleSpec | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> SampleBuildResult:
    """Write ``spec`` (default: ``make_sample_spec()``, 8 classes × 12 videos) under ``root``.

    Idempotent: a complete dataset of the same spec is left alone (``already_complete``); an
    interrupted build resumes, encoding only the missing videos. A folder that holds something
    else (another spec, or files without a manifest) is refused unless ``force``, which deletes
    what a previous ``make-sample`` wrote (never other files) and rebuilds.

    Args:
        workers (int | None): encoder processes; ``None`` = all usable cores; 1 = in this process.
        progress (bool): show a tqdm bar (stderr) while encoding.
    """
    spec = spec or make_sample_spec()
    root = Path(root).expanduser()
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers ({workers}) must be >= 1")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"--out {root} exists and is not a directory")
    started = time.perf_counter()
    manifest = _read_manifest(root)
    fingerprint = spec.fingerprint()
    if force:
        _remove_previous(root, manifest)
    elif manifest is not None and manifest.get("fingerprint") != fingerprint:
        raise DatasetError(
            f"{root} holds a sample dataset made with other settings ({manifest.get('request')}); "
            "use --force to replace it, or choose another --out")
    elif manifest is None and root.is_dir() and any(root.iterdir()):
        raise DatasetError(f"{root} is not empty and was not made by make-sample; use --force or another --out")

    todo = missing_videos(root, spec)
    if not todo and _annotations_current(root, spec):
        return SampleBuildResult(root=str(root), num_videos=len(spec.videos), num_encoded=0, already_complete=True,
                                 total_video_seconds=spec.total_seconds, total_bytes=_total_bytes(root, spec),
                                 elapsed_seconds=time.perf_counter() - started, workers=0)
    request = {k: v for k, v in spec.model_dump().items() if k != "videos"}
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / MANIFEST_NAME).write_text(json.dumps(
            {"fingerprint": fingerprint, "request": request,
             "relative_paths": [v.relative_path for v in spec.videos]}, indent=1))
    except OSError as exc:
        raise DatasetError(f"cannot write to {root}: {exc}") from None

    # longest first, so the pool does not end with one big video on one core
    todo.sort(key=lambda v: v.num_frames * v.width_pixels * v.height_pixels, reverse=True)
    used = min(workers, max(1, len(todo)))
    _encode_all(root, todo, used, progress)
    shutil.rmtree(root / _PARTIAL_DIR, ignore_errors=True)
    try:
        _write_annotations(root, spec)
    except OSError as exc:
        raise DatasetError(f"cannot write the annotations under {root}: {exc}") from None
    return SampleBuildResult(root=str(root), num_videos=len(spec.videos), num_encoded=len(todo),
                             already_complete=False, total_video_seconds=spec.total_seconds,
                             total_bytes=_total_bytes(root, spec), elapsed_seconds=time.perf_counter() - started,
                             workers=used)


def _total_bytes(root: Path, spec: SampleSpec) -> int:
    return sum((root / v.relative_path).stat().st_size for v in spec.videos if (root / v.relative_path).is_file())


def _encode_all(root: Path, todo: list[SampleVideo], workers: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="video", desc="make-sample", disable=not progress or not todo,
               file=sys.stderr, dynamic_ncols=True)
    try:
        if workers == 1:
            for video in todo:
                _encode_into(str(root), video)
                bar.update(1)
            return
        # 'spawn': safe even when the caller (the demo, later the service) already runs threads
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        try:
            pending = {pool.submit(_encode_into, str(root), v) for v in todo}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        future.result()  # re-raises a worker's DatasetError here
                    except BrokenProcessPool:
                        raise DatasetError("an encoder process died (killed, or out of memory?); "
                                           "run make-sample again to resume") from None
                    bar.update(1)
        except BaseException:
            # Ctrl-C or a failure: drop the queued videos and wait only for the (at most
            # ``workers``) running ones. Cancelling our own futures is reliable, unlike
            # shutdown(cancel_futures=True), which is skipped if the executor is collected first.
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            raise
        pool.shutdown()
    finally:
        bar.close()
