"""Where batches come from: ``clipserve.client.ClipStream`` in production, a synthetic stream for
tests and demos. Both yield ``clipserve.batch.Batch`` objects (torch tensors: ``clips`` (B, ρ, C,
T, H, W) uint8, ``video_index`` (B,), ``label`` (B,), ``clip_start_seconds`` (B, ρ),
``is_padding`` (B,), ``epoch``, ``step``) and offer ``state_dict()`` / ``load_state_dict()`` for
an exact resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from clipserve.batch import Batch, steps_per_epoch
from trainer.layout import ConsumerSlot, LaunchEnv, node_shard_map, resolve_layout

SyntheticBatch = Batch
"""The synthetic stream's batches are ``clipserve.batch.Batch`` objects; the old name stays for callers."""


class SyntheticClipStream:
    """A deterministic, learnable stand-in for the service: a pure function of (seed, epoch, step, rank).

    Video v has label ``v % num_classes``; its clips show a bright square moving in the class's
    direction (the sample dataset's idea: classes = motion patterns) over noise, with a per-clip
    random position, so clips of one video share the class but differ in content.
    ``limit_steps`` stops after that many batches from the start position (simulates a stopped run).
    """

    def __init__(
        self, *, batch_size: int = 8, num_clips: int = 2, frames: int = 8, size_pixels: int = 64, num_videos: int = 64,
        num_classes: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1, start_epoch: int = 0,
        start_step: int = 0, limit_steps: int | None = None,
    ) -> None:
        if batch_size < 1 or num_clips < 1 or frames < 1 or size_pixels < 8 or num_videos < 1 or num_classes < 1:
            raise ValueError("synthetic stream sizes must be positive (size_pixels >= 8)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.batch_size, self.num_clips, self.frames, self.size = batch_size, num_clips, frames, size_pixels
        self.num_videos, self.num_classes, self.seed = num_videos, num_classes, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = steps_per_epoch(num_videos, batch_size=batch_size, world_size=world_size)
        self.epoch, self.step = start_epoch, start_step
        self.limit_steps = limit_steps

    def state_dict(self) -> dict[str, Any]:
        """Position of the next batch."""
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def __iter__(self) -> Iterator[Batch]:
        produced = 0
        while self.limit_steps is None or produced < self.limit_steps:
            batch = self._make(self.epoch, self.step)
            following = batch.position.next(self.steps_per_epoch)
            self.epoch, self.step = following.epoch, following.step
            produced += 1
            yield batch

    def _make(self, epoch: int, step: int) -> Batch:
        g = torch.Generator().manual_seed(hash((self.seed, epoch, step, self.rank)) % (2**62))
        order = torch.randperm(self.num_videos, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        first = (step * self.world_size + self.rank) * self.batch_size
        positions = torch.arange(first, first + self.batch_size)
        is_padding = positions >= self.num_videos
        video_index = order[positions % self.num_videos]
        label = video_index % self.num_classes
        b, rho, t, s = self.batch_size, self.num_clips, self.frames, self.size
        clips = torch.randint(0, 60, (b, rho, 3, t, s, s), generator=g, dtype=torch.uint8)
        square = max(s // 4, 2)
        directions = [(1, 0), (-1, 0), (0, 1), (0, -1)]
        start = torch.randint(0, s - square, (b, rho, 2), generator=g)
        speed = max(s // (2 * t), 1)
        for n in range(b):
            dy, dx = directions[int(label[n]) % 4]
            level = 120 + 40 * (int(label[n]) // 4 % 4)
            for i in range(rho):
                for f in range(t):
                    y = int(start[n, i, 0] + dy * speed * f) % (s - square)
                    x = int(start[n, i, 1] + dx * speed * f) % (s - square)
                    clips[n, i, :, f, y : y + square, x : x + square] = level
        starts = torch.rand(b, rho, generator=g, dtype=torch.float32) * 10.0
        return Batch(clips, video_index.long(), label.long(), starts, is_padding, epoch, step)


def consumer_slot(
    urls: Sequence[str], layout: str, *, rank: int, world_size: int, attach_timeout_seconds: float = 120.0,
) -> ConsumerSlot:
    """Read every service's ``/v1/info`` (waiting up to ``attach_timeout_seconds`` for it) and decide how this rank attaches
    (:func:`trainer.layout.resolve_layout`; ConfigError when the layout would leave videos unread).

    ``rank``/``world_size`` are the job's; torchrun's ``LOCAL_*`` and ``GROUP_RANK`` variables give the
    node (without them, or when they disagree with ``rank``/``world_size``, the job is one node). All
    ranks must call it together: it gathers which shard each node reads.
    """
    if not urls:
        raise ValueError("no --server given: pass the clipserve URL (e.g. http://127.0.0.1:8000) or 'synthetic'")
    from clipserve.client_multi import fetch_service_shard
    from trainer.dist import gather_objects

    launch = LaunchEnv.from_environ()
    if (launch.rank, launch.world_size) != (rank, world_size):
        launch = LaunchEnv(rank, world_size, rank, world_size, 0)
    shards = [fetch_service_shard(url, wait_seconds=attach_timeout_seconds) for url in urls]
    # every rank takes part, whatever the layout (a collective): who reads which shard
    gathered = gather_objects((launch.node_rank, shards[0].shard_id))
    node_shards = node_shard_map(gathered) if len(gathered) == world_size > 1 else None  # type: ignore[arg-type]
    return resolve_layout(layout, shards, launch, node_shards)


def open_clip_stream(
    server: str | Sequence[str], *, rank: int, world_size: int, start_epoch: int = 0, start_step: int = 0,
    transport: str = "shm", attach_timeout_seconds: float = 120.0, expected_shard: Any = None,
) -> Any:
    """Attach to a clipserve service as consumer ``rank`` of ``world_size`` (attaches lazily, on the
    first batch, so a resume's ``load_state_dict`` comes first).

    One URL: ``clipserve.client.ClipStream(server, rank=rank, world_size=world_size, start_epoch=…,
    start_step=…, transport=…, reconnect_timeout_seconds=attach_timeout_seconds)``; several (the shards
    of one epoch, on several decode hosts): ``clipserve.client_multi.MultiClipStream`` with the same
    arguments. A malformed URL raises ``clipserve.client.ServiceURLError`` here, at once.
    ``expected_shard`` (a ``ServiceShard``, one URL): after a re-attach, the service must still serve
    that shard (``ShardCheckedStream``).
    """
    urls = server.split() if isinstance(server, str) else list(server)
    if not urls:
        raise ValueError("no --server given: pass the clipserve URL (e.g. http://127.0.0.1:8000) or 'synthetic'")
    if len(urls) > 1:
        from clipserve.client_multi import MultiClipStream

        return MultiClipStream(urls, rank=rank, world_size=world_size, start_epoch=start_epoch, start_step=start_step,
                               transport=transport, reconnect_timeout_seconds=attach_timeout_seconds)  # type: ignore[arg-type]
    from clipserve.client import ClipStream

    stream = ClipStream(urls[0], rank=rank, world_size=world_size, start_epoch=start_epoch, start_step=start_step,
                        transport=transport, reconnect_timeout_seconds=attach_timeout_seconds)  # type: ignore[arg-type]
    if expected_shard is None:
        return stream
    from clipserve.client_multi import ShardCheckedStream

    return ShardCheckedStream(stream, expected_shard)


def first_epoch_videos(batches: Iterable[Batch], max_batches: int | None = None) -> Iterator[tuple[int, Batch, list[int]]]:
    """The batches of a stream's first epoch, each with the positions of its videos to use: not
    padding and not seen before in this pass: ``(batch number, batch, positions)``; batches with
    none are skipped. Stops when the epoch changes, the iterable ends or at batch ``max_batches``.
    The readouts (``trainer.eval``'s features, ``trainer.readout``'s multi-view test) see each video once this way."""
    seen: set[int] = set()
    first_epoch = None
    for i, batch in enumerate(batches):
        if first_epoch is None:
            first_epoch = batch.epoch
        if batch.epoch != first_epoch or (max_batches is not None and i >= max_batches):
            return
        keep = [n for n in range(batch.clips.shape[0])
                if not bool(batch.is_padding[n]) and int(batch.video_index[n]) not in seen]
        seen.update(int(batch.video_index[n]) for n in keep)
        if keep:
            yield i, batch, keep
