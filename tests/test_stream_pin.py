"""The stream is pinned: for one generated dataset and one (seed, epoch, shard, consumer), the
batches' bytes and metadata hash to a digest recorded from the code before the issue-13
restructuring, so moving code between modules cannot change what a trainer receives.

The videos are libx264 encodes made here with fixed settings (``deterministic=True``, one encoder
thread, frames given as yuv420p so no colour conversion runs before the encoder), so the files are
byte-identical on every run; their digest is pinned too, so a failure says whether the input or
the pipeline changed. The same batches are taken twice: from the real producer in this process
(``BatchProducer``, PyAV workers), and from the real service (``clipserve start`` on 127.0.0.1)
through ``ClipStream`` over shared memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.index import VideoIndex, build_index
from clipserve.media.encode import encode_video
from tests.service_helpers import SERVICE_SETTINGS, running_service

pytestmark = pytest.mark.timeout(240)

NUM_VIDEOS = 12
SEED = SERVICE_SETTINGS["seed"]
SHARD_ID, NUM_SHARDS = 1, 2
RANK, WORLD_SIZE = 1, 2
START_EPOCH, START_STEP = 1, 1
NUM_BATCHES = 3
"""12 videos / (2 shards × 2 ranks) = 3 per consumer; batch size 2 → 2 steps per epoch, so the
batches taken, (1, 1), (2, 0), (2, 1), cross an epoch boundary and include padding rows."""

# Recorded before the restructuring of issue 13, at commit 1a862b4 (the code before any of it).
VIDEOS_SHA256 = "c5fb3f7688ecb3afb2e2e53e10f94f2024a9e8cac900ea8809bffa1cc9cdd105"
STREAM_SHA256 = "7686855e989b392339783e71ef764420f6ccd8e6f2bc0123380a5e1995960a3d"


def _yuv_frames(num_frames: int, width: int, height: int, seed: int) -> list[np.ndarray]:
    """yuv420p frames ``(H·3/2, W)`` uint8: a seeded 8×8-block texture with a moving bright square."""
    rng = np.random.default_rng(seed)
    texture = np.kron(rng.integers(16, 200, size=(height // 8, width // 8), dtype=np.uint8), np.ones((8, 8), np.uint8))
    chroma_u = np.full((height // 4, width), 90 + 8 * seed % 60, np.uint8)
    chroma_v = np.full((height // 4, width), 160 - 5 * seed % 60, np.uint8)
    frames = []
    for i in range(num_frames):
        luma = texture.copy()
        x, y = (4 * i) % (width - 16), (3 * i) % (height - 16)
        luma[y : y + 16, x : x + 16] = 235
        frames.append(np.concatenate([luma, chroma_u, chroma_v]))
    return frames


def _make_dataset(root: Path) -> str:
    """Two class folders of six videos each; return the sha256 of all file bytes in path order."""
    digest = hashlib.sha256()
    for i in range(NUM_VIDEOS):
        path = root / ("juggling" if i % 2 else "archery") / f"clip{i:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_video(path, _yuv_frames(30 + 4 * i, 64, 48, seed=i), fps=30, keyframe_interval_frames=10,
                     deterministic=True, input_format="yuv420p", extra_options={"threads": "1"})
    for path in sorted(root.rglob("*.mp4")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def stream_digest(batches: list[dict[str, object]]) -> str:
    """sha256 over each batch's epoch, step, metadata arrays (exact dtypes) and clip bytes."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(f"{batch['epoch']},{batch['step']};".encode())
        for name, dtype in (("video_index", np.int64), ("label", np.int64), ("is_padding", np.bool_),
                            ("clip_start_seconds", np.float32), ("clips", np.uint8)):
            array = np.ascontiguousarray(np.asarray(batch[name]))
            assert array.dtype == dtype, (name, array.dtype)
            digest.update(f"{name}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def pinned_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("pin-videos")
    return root, _make_dataset(root)


def test_the_generated_videos_are_the_recorded_ones(pinned_dataset: tuple[Path, str]) -> None:
    _, videos_sha256 = pinned_dataset
    assert videos_sha256 == VIDEOS_SHA256


def test_the_producer_stream_is_the_recorded_one(pinned_dataset: tuple[Path, str], tmp_path: Path) -> None:
    from clipserve.executors.pool import BatchProducer

    root, _ = pinned_dataset
    index: VideoIndex = build_index(root, dataset="k400", split="train", workers=0, progress=False,
                                    cache_path=tmp_path / "index.sqlite")
    assert len(index.records) == NUM_VIDEOS
    sampling = SamplingConfig(num_clips=SERVICE_SETTINGS["num_clips"], frames_per_clip=SERVICE_SETTINGS["frames_per_clip"],
                              frame_stride=SERVICE_SETTINGS["frame_stride"])
    augment = AugmentConfig(crop_size_pixels=SERVICE_SETTINGS["crop_size_pixels"])
    with BatchProducer(index, sampling=sampling, augment=augment, batch_size=SERVICE_SETTINGS["batch_size"], seed=SEED,
                       workers=1, prefetch_batches=2, shard_id=SHARD_ID, num_shards=NUM_SHARDS, rank=RANK,
                       world_size=WORLD_SIZE) as producer:
        iterator = producer.batches(START_EPOCH, START_STEP)
        batches = []
        for _ in range(NUM_BATCHES):
            batch = next(iterator)
            assert batch.substitutions == []
            batches.append({"epoch": batch.epoch, "step": batch.step, "video_index": batch.video_index,
                            "label": batch.label, "is_padding": batch.is_padding,
                            "clip_start_seconds": batch.clip_start_seconds, "clips": np.array(batch.clips)})
    assert [(b["epoch"], b["step"]) for b in batches] == [(1, 1), (2, 0), (2, 1)]
    assert any(bool(np.any(b["is_padding"])) for b in batches)
    assert stream_digest(batches) == STREAM_SHA256


def test_the_service_stream_is_the_recorded_one(pinned_dataset: tuple[Path, str], tmp_path: Path) -> None:
    from clipserve.client import ClipStream

    root, _ = pinned_dataset
    with running_service(root, tmp_path / "service.log",
                         extra_args=["--shard-id", str(SHARD_ID), "--num-shards", str(NUM_SHARDS),
                                     "--index-cache", str(tmp_path / "index.sqlite")]) as service:
        batches = []
        with ClipStream(service.url, rank=RANK, world_size=WORLD_SIZE, start_epoch=START_EPOCH, start_step=START_STEP,
                        transport="shm", timeout_seconds=60.0) as stream:
            for batch in stream:
                with batch:
                    batches.append({"epoch": batch.epoch, "step": batch.step, "video_index": batch.video_index.numpy(),
                                    "label": batch.label.numpy(), "is_padding": batch.is_padding.numpy(),
                                    "clip_start_seconds": batch.clip_start_seconds.numpy(),
                                    "clips": batch.clips.numpy().copy()})
                if len(batches) == NUM_BATCHES:
                    break
    assert stream_digest(batches) == STREAM_SHA256
