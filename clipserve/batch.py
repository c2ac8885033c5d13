"""The batch: what one step of one consumer delivers, its shape, and where it sits in the stream.

One ``Batch`` class serves every stage: the producer (``clipserve.executors.pool``) fills it with
numpy arrays (a CUDA tensor for ``clips`` on the DALI GPU path), the transports
(``clipserve.transport``) write it into a ring slot or an HTTP frame, and the client
(``clipserve.client.ClipStream``) hands the trainer one with torch tensors (``clips`` a zero-copy
view of a shared-memory slot, given back by ``release()``).

The stream of a consumer is a sequence of positions ``(epoch, step)``: every epoch has
``steps_per_epoch(num_videos, batch_size=B, num_shards=N, world_size=W)`` steps, the same for
every rank of a job, and ``StreamPosition.next`` is the one rule for what comes after a step.

Shapes (B = videos per batch, ρ = clips per video, C = 3 colour channels, T = frames per clip,
S = output size in pixels; H = W = S):

==================== ======= ===================== ==========================================
field                dtype   shape                 meaning
==================== ======= ===================== ==========================================
clips                uint8   (B, ρ, C, T, H, W)    augmented clips, values in [0, 255]
video_index          int64   (B,)                  position of the video in the service index
label                int64   (B,)                  class id of the video
clip_start_seconds   float32 (B, ρ)                start time of each clip, seconds
is_padding           bool    (B,)                  True for rows that wrap to fill the last batch
==================== ======= ===================== ==========================================

The multi-view test (``--temporal-sampling uniform --num-clips K --spatial-crops S``) serves each
video as ρ = K·S views, temporal-major as PySlowFast's test loader numbers them: view
``v = k·S + s`` is clip k (starting at k/K of the video's start range) under crop s (0: start,
1: centre, 2: end of the long side). ``clips.view(B, K, S, C, T, H, W)`` regroups them; a
classifier's per-view scores ``(B·K·S, classes)`` become per-video scores by ``.view(B, K·S,
classes)`` and a mean over dim 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.plan import consumer_epoch_length
from clipserve.plan_models import ClipPlan

__all__ = [
    "ARRAY_FIELDS",
    "CHANNELS",
    "Batch",
    "StreamPosition",
    "Substitution",
    "batch_clips_shape",
    "clips_shape",
    "plan_clips_shape",
    "steps_per_epoch",
]

#: Colour channels of every clip (RGB).
CHANNELS = 3
#: The array fields of a batch, in the order the ring slots and HTTP frames store them.
ARRAY_FIELDS: tuple[str, ...] = ("clips", "video_index", "label", "clip_start_seconds", "is_padding")


def clips_shape(sampling: SamplingConfig, augment: AugmentConfig) -> tuple[int, int, int, int, int]:
    """``(ρ, C, T, S, S)``: the clips of one video (one row of a batch) for these configs; for the
    multi-view test ρ = K·S views (``SamplingConfig.views_per_video``)."""
    size = augment.crop_size_pixels
    return (sampling.views_per_video, CHANNELS, sampling.frames_per_clip, size, size)


def plan_clips_shape(plan: ClipPlan) -> tuple[int, int, int, int, int]:
    """``(ρ, C, T, S, S)``: the clips one plan produces (its own sizes; the configs' for an empty plan)."""
    size = plan.clips[0].augment.output_size_pixels if plan.clips else plan.augment_config.crop_size_pixels
    frames = len(plan.clips[0].frame_indices) if plan.clips else plan.sampling.frames_per_clip
    return (len(plan.clips), CHANNELS, frames, size, size)


def batch_clips_shape(batch_size: int, sampling: SamplingConfig, augment: AugmentConfig) -> tuple[int, ...]:
    """``(B, ρ, C, T, S, S)``: ``Batch.clips`` for ``batch_size`` videos and these configs."""
    return (batch_size, *clips_shape(sampling, augment))


def steps_per_epoch(num_videos: int, *, batch_size: int, num_shards: int = 1, world_size: int = 1) -> int:
    """Batches per epoch of each consumer when ``world_size`` consumers share one of ``num_shards``.

    Every consumer takes ``ceil(L / B)`` steps with ``L = consumer_epoch_length(num_videos,
    num_shards, world_size)``, the longest consumer part (shorter parts are padded), so all ranks
    of a job take the same number of steps. Equal to ``ceil(num_videos / (B · N · W))`` when
    ``num_shards`` N = 1 (ceil(ceil(x/a)/b) = ceil(x/(a·b))).

    Example: 10 videos, B = 2, 2 shards, 2 ranks: L = ceil(ceil(10/2)/2) = 3, so 2 steps.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size ({batch_size}) must be >= 1")
    videos = consumer_epoch_length(num_videos, num_shards=num_shards, world_size=world_size)
    return -(-videos // batch_size)


@dataclass(frozen=True, order=True)
class StreamPosition:
    """Where a batch sits in a consumer's stream: step ``step`` (0-based) of epoch ``epoch``."""

    epoch: int
    step: int

    def next(self, steps_per_epoch: int | None) -> StreamPosition:
        """The position after this one: the next step, or step 0 of the next epoch after step
        ``steps_per_epoch - 1``. ``None`` (epoch length unknown) always gives the next step."""
        if steps_per_epoch is not None and self.step + 1 >= steps_per_epoch:
            return StreamPosition(self.epoch + 1, 0)
        return StreamPosition(self.epoch, self.step + 1)


class Substitution(BaseModel):
    """One video of a batch that failed and what replaced it."""

    position: int
    """Position in the batch (0..B-1)."""
    video_index: int
    """The video that failed."""
    relative_path: str
    reason: str
    substitute_video_index: int
    """The video delivered in its place (next in this consumer's order that decodes)."""


@dataclass
class Batch:
    """One step of one consumer (shapes in the module docstring).

    The arrays are numpy arrays in the service and torch tensors on the trainer side (``clips`` is
    a CUDA tensor on the DALI GPU path). A batch the client received over shared memory views a
    ring slot: ``release()`` (or leaving ``with batch:``) gives the slot back, after which
    ``clips`` must not be used; the other arrays are copies.
    """

    clips: Any
    """``(B, ρ, C, T, H, W)`` uint8 RGB, values in [0, 255]."""
    video_index: Any
    """``(B,)`` int64, index of the video each row comes from (the substitute's, if substituted)."""
    label: Any
    """``(B,)`` int64 class ids."""
    clip_start_seconds: Any
    """``(B, ρ)`` float32 start time of each clip, seconds from the video's first frame."""
    is_padding: Any
    """``(B,)`` bool: True for rows that wrap around the end of this consumer's order."""
    epoch: int
    step: int
    substitutions: list[Substitution] = field(default_factory=list)
    """Videos of this batch that failed and were replaced (the service side; the client sees none)."""
    _release: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(int(self.epoch), int(self.step))

    def release(self) -> None:
        """Give the shared-memory slot back now (idempotent; no-op for batches that own their arrays)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        clips = self.clips
        padding = int(sum(bool(v) for v in self.is_padding)) if self.is_padding is not None else 0
        return (
            f"Batch(epoch={self.epoch}, step={self.step}, clips={tuple(clips.shape)} {clips.dtype}, "
            f"padding_rows={padding}, substitutions={len(self.substitutions)})"
        )
