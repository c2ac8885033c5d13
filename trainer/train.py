"""The training loop, top to bottom (nanoGPT style): config → stream → model → loop → checkpoints.

    python -m trainer --objective moco --server http://127.0.0.1:8000 --max-steps 1000
    torchrun --nproc-per-node 2 -m trainer --objective simclr --server http://127.0.0.1:8000

Each rank attaches to the service(s) as the layout says (:mod:`trainer.layout`: consumer ``RANK``
of ``WORLD_SIZE``, or ``LOCAL_RANK`` of ``LOCAL_WORLD_SIZE`` of its node's service); rank 0 alone
logs and saves. ``train(config, batches)`` runs the same loop on any iterable of batches; the CLI entry
point is :func:`trainer.cli.main`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer import dist as tdist
from trainer.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from trainer.config import ConfigError, TrainConfig
from trainer.data import SyntheticClipStream, consumer_slot, open_clip_stream
from trainer.interrupt import GracefulInterrupt
from trainer.objectives import Objective, build_objective
from trainer.optim import build_optimizer
from trainer.utils import linear_scaling_factor, normalize_clips, warmup_cosine_lr


@dataclass
class TrainResult:
    """What a run did: ``losses[i]`` is the rank-averaged loss of step ``first_step + i``."""

    first_step: int
    final_step: int
    losses: list[float] = field(default_factory=list)
    checkpoint_path: Path | None = None


def log(message: str) -> None:
    """A line on stderr from rank 0 (keeps the tqdm bar intact)."""
    if tdist.is_main_process():
        from tqdm import tqdm

        tqdm.write(f"[trainer] {message}", file=sys.stderr)


def make_source(config: TrainConfig, rank: int, world_size: int) -> Any:
    """The batch source: a stream of the services of ``config.server`` (attached as the layout
    ``config.service_layout`` says: :mod:`trainer.layout`), or the synthetic stream for 'synthetic'."""
    if config.server == "synthetic":
        return SyntheticClipStream(
            batch_size=config.synthetic_batch_size, num_clips=config.synthetic_num_clips,
            frames=config.synthetic_frames, size_pixels=config.synthetic_size_pixels,
            num_videos=config.synthetic_num_videos, seed=config.seed, rank=rank, world_size=world_size,
        )
    slot = consumer_slot(config.server.split(), config.service_layout, rank=rank, world_size=world_size,
                         attach_timeout_seconds=config.attach_timeout_seconds)
    log(slot.describe())
    return open_clip_stream(list(slot.urls), rank=slot.rank, world_size=slot.world_size, transport=config.transport,
                            attach_timeout_seconds=config.attach_timeout_seconds,
                            expected_shard=slot.shards[0] if len(slot.shards) == 1 else None)


def batch_record(batch: Any) -> dict[str, Any]:
    """What ``--record-videos`` writes per batch: position, videos, padding, sha256 of the clip bytes."""
    clips = batch.clips.detach().contiguous().cpu()
    return {"epoch": int(batch.epoch), "stream_step": int(batch.step),
            "video_index": [int(v) for v in batch.video_index], "is_padding": [bool(v) for v in batch.is_padding],
            "clips_sha256": hashlib.sha256(clips.numpy().tobytes()).hexdigest()}


def weights_digest(model: nn.Module) -> str:
    """sha256 of the parameters' bytes (name order): equal on every rank when DDP keeps them in step."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_num_clips(num_clips: int, where: str) -> None:
    """Every objective compares ρ >= 2 clips of a video: a ``ConfigError`` naming the flag otherwise."""
    if num_clips < 2:
        raise ConfigError(f"{where} serves ρ={num_clips} clip(s) per video, and the objectives need ρ >= 2 "
                          f"positives: restart the service with --num-clips 2 or more (clipserve start ... --num-clips 2)")


CPU_SIZED_BACKBONES = ("tiny",)
"""Backbones a CPU trains at a useful pace; the others are GPU-sized (a warning says so on the CPU)."""


def cpu_backbone_warning(backbone: str, clips_shape: tuple[int, ...], max_steps: int) -> str:
    """The line a GPU-sized backbone on the CPU gets: what it costs and the CPU-sized command."""
    return (f"warning: --backbone {backbone} is running on the CPU with clips {clips_shape} (B, ρ, C, T, H, W): "
            f"a step can take minutes (slow_r50, B=8, ρ=2, 224², T=8 took 95 s on a 2-core CPU, so "
            f"{max_steps} steps would take hours to days). The big backbones need a GPU (--device cuda); on a "
            f"CPU train with --profile cpu --backbone tiny")


def _any_rank_wants_to_stop(wants_to_stop: bool, device: torch.device) -> bool:
    """True when any rank asks to stop (Ctrl-C, time budget), so all ranks stop after the same step."""
    flag = torch.tensor([1.0 if wants_to_stop else 0.0], device=device)
    tdist.all_reduce_sum_(flag)
    return bool(flag.item() > 0)


def train(config: TrainConfig, batches: Iterable | None = None) -> TrainResult:
    """Train ``config.objective`` on ``batches`` (default: :func:`make_source`, closed at the end)
    until ``config.max_steps`` or the end of the iterable; checkpoint to ``config.checkpoint_dir``.

    ``batches`` yields objects with ``clips`` (B, ρ, C, T, H, W) uint8, ``epoch`` and ``step``; if it
    has ``state_dict()``/``load_state_dict()`` its position is checkpointed and restored on resume.
    """
    if batches is not None:
        return _train(config, batches)
    ctx = tdist.init_from_env(config.device)
    source = make_source(config, ctx.rank, ctx.world_size)
    try:
        return _train(config, source)
    finally:
        if hasattr(source, "close"):
            source.close()


def _train(config: TrainConfig, source: Iterable) -> TrainResult:
    # -------------------------------------------------------------- system and distributed
    ctx = tdist.init_from_env(config.device)
    device, is_main = ctx.device, ctx.rank == 0
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    out_dir = Path(config.checkpoint_dir)
    checkpoint = load_checkpoint(out_dir, map_location="cpu") if config.resume else None
    if checkpoint is not None and checkpoint["config"]["objective"] != config.objective:
        raise ConfigError(f"checkpoint in {out_dir} is for {checkpoint['config']['objective']!r}, not {config.objective!r}")
    per_rank = None
    if checkpoint is not None:
        saved = checkpoint["per_rank"]
        if len(saved) != ctx.world_size:
            log(f"note: checkpoint has {len(saved)} ranks, resuming with {ctx.world_size}: rank 0's buffers/RNG for all")
        per_rank = saved[ctx.rank] if ctx.rank < len(saved) else saved[0]
        changed = {k: v for k, v in dataclasses.asdict(config).items() if k != "resume" and checkpoint["config"].get(k) != v}
        if changed:
            log(f"note: resuming with settings that differ from the checkpoint's: {changed}")

    # -------------------------------------------------------------- data
    if per_rank is not None and per_rank["stream"] is not None:
        if not hasattr(source, "load_state_dict"):
            raise ConfigError("resuming needs a batch source with load_state_dict() (the saved stream position)")
        stream_state = per_rank["stream"]
        if len(checkpoint["per_rank"]) != ctx.world_size:  # other world size: keep only the position
            stream_state = {"epoch": stream_state["epoch"], "step": stream_state["step"]}
        source.load_state_dict(stream_state)
    if hasattr(source, "layout"):  # a ClipStream: ρ is known at attach time, before any batch is decoded
        check_num_clips(source.layout.clips_shape[1], getattr(source, "url", "the service"))
    batch_iter = iter(source)
    wait_start = time.perf_counter()
    batch = next(batch_iter, None)
    first_wait_seconds = time.perf_counter() - wait_start
    if batch is None:
        raise ConfigError("the batch source produced no batches")
    num_clips = batch.clips.shape[1]  # ρ, fixed by the service
    check_num_clips(num_clips, getattr(source, "url", "the batch source"))
    if checkpoint is not None and checkpoint["num_clips"] != num_clips:
        raise ConfigError(f"the checkpoint was trained with ρ={checkpoint['num_clips']} clips per video, the stream has ρ={num_clips}")

    # -------------------------------------------------------------- model and optimizer
    if device.type == "cpu" and config.backbone not in CPU_SIZED_BACKBONES:
        log(cpu_backbone_warning(config.backbone, tuple(batch.clips.shape), config.max_steps))
    torch.manual_seed(config.seed)  # identical init on every rank
    model: nn.Module = build_objective(config, num_clips=num_clips).to(device)
    if config.sync_batchnorm and ctx.world_size > 1:
        model = tdist.convert_sync_batchnorm(model, device)
        if device.type != "cuda":
            log("note: torch's SyncBatchNorm needs CUDA; using an all-reduce BatchNorm over gloo instead")
    raw_model = cast(Objective, model)  # the objective itself; `model` may become its DDP wrapper below
    optimizer = build_optimizer(
        raw_model, name=config.optimizer, lr=0.0, weight_decay=config.weight_decay, momentum=config.sgd_momentum,
        nesterov=config.nesterov, trust_coefficient=config.lars_trust_coefficient,
    )
    start_step = 0
    if checkpoint is not None:
        raw_model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_step = int(checkpoint["step"])
    if ctx.world_size > 1:
        # No buffer sync in forward: MoCo/SwAV queues and non-synced BN statistics are per rank. (DDP's
        # initial sync copies rank 0's buffers; each rank's saved buffers are restored just below.)
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})  # torch >= 2.14 deprecates broadcast_buffers
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)
    if per_rank is not None:  # after DDP's initial broadcast of rank 0's state
        with torch.no_grad():
            buffers = dict(raw_model.named_buffers())
            for name, value in per_rank["buffers"].items():
                buffers[name].copy_(value)
        set_rng_state(per_rank["rng"])
    else:
        torch.manual_seed(config.seed * 1000 + ctx.rank)  # per-rank randomness from here on
    use_amp = config.mixed_precision != "none" and device.type == "cuda"
    if config.mixed_precision != "none" and not use_amp:
        log(f"note: mixed_precision={config.mixed_precision} needs CUDA; running in float32")
    amp_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    global_batch_size = batch.clips.shape[0] * ctx.world_size
    lr_scale = linear_scaling_factor(global_batch_size, config.reference_batch_size)
    warmup_steps = int(config.warmup_fraction * config.max_steps)

    def get_lr(step: int) -> float:  # a function of the step only
        return warmup_cosine_lr(step, config.max_steps, base_lr=config.base_lr * lr_scale, warmup_steps=warmup_steps,
                                warmup_start_lr=config.warmup_start_lr * lr_scale, final_lr=config.final_lr * lr_scale)

    last_position: dict[str, int] | None = per_rank.get("last_batch") if per_rank is not None else None

    def stream_position() -> dict[str, Any] | None:
        """Where the stream resumes: the next batch, or the fetched batch that was not trained yet."""
        if not hasattr(source, "state_dict"):
            return None
        state = source.state_dict()
        if batch is not None:
            state = {**state, "epoch": int(batch.epoch), "step": int(batch.step)}
        return state

    def save(step: int) -> Path | None:
        """All ranks contribute their buffers / RNG / stream position; rank 0 writes."""
        mine = {
            "buffers": {k: v.detach().cpu().clone() for k, v in raw_model.named_buffers()},
            "rng": rng_state(),
            "stream": stream_position(),
            "last_batch": last_position,
        }
        gathered: list[Any] = [None] * ctx.world_size
        if ctx.world_size > 1:
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        if not is_main:
            return None
        return save_checkpoint(out_dir, {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "config": dataclasses.asdict(config), "world_size": ctx.world_size, "num_clips": num_clips,
            "per_rank": gathered, "version": 1,
        })

    # -------------------------------------------------------------- logging
    metrics_file = None
    writer = None
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_file = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            writer = None
        log(f"{config.objective} on {config.backbone}, {ctx.world_size} rank(s) on {device}, ρ={num_clips}, "
            f"global batch {global_batch_size} videos, lr {config.base_lr * lr_scale:.4g}, steps {start_step}→{config.max_steps}")
        log("config " + json.dumps(dataclasses.asdict(config), sort_keys=True))
    from tqdm import tqdm

    bar = tqdm(total=config.max_steps, initial=start_step, disable=not (is_main and config.progress),
               dynamic_ncols=True, unit="step", file=sys.stderr)

    videos_file = None
    if config.record_videos:  # every rank: what it trained on (coverage and restart checks)
        out_dir.mkdir(parents=True, exist_ok=True)
        videos_file = open(out_dir / f"videos-rank{ctx.rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    # -------------------------------------------------------------- the loop
    result = TrainResult(first_step=start_step, final_step=start_step)
    step = start_step
    window = {"wait": first_wait_seconds, "clips": 0, "start": time.perf_counter() - first_wait_seconds, "loss": 0.0, "n": 0}

    def write_metrics(lr: float, scalars: dict) -> None:
        """Write one metrics record for the steps since the last one (the window), then start a new window."""
        nonlocal window
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        record = {"step": step, "epoch": last_position["epoch"], "stream_step": last_position["step"],
                  "loss": window["loss"] / window["n"], "lr": lr, **scalars,
                  "clips_per_second": window["clips"] / elapsed, "data_wait_fraction": window["wait"] / elapsed,
                  "time_unix_seconds": time.time()}
        bar.set_postfix(loss=f"{record['loss']:.4f}", clips_s=f"{record['clips_per_second']:.1f}",
                        wait=f"{100 * record['data_wait_fraction']:.0f}%", refresh=False)
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        if writer is not None:
            for key, value in record.items():
                if key not in ("step", "time_unix_seconds") and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(key, value, step)
        window = {"wait": 0.0, "clips": 0, "start": time.perf_counter(), "loss": 0.0, "n": 0}

    model.train()
    interrupted = False
    loop_start = time.perf_counter()
    ctrl_c = GracefulInterrupt()
    try:
        ctrl_c.__enter__()
        while step < config.max_steps:
            time_is_up = config.max_seconds > 0 and time.perf_counter() - loop_start >= config.max_seconds
            if _any_rank_wants_to_stop(time_is_up or ctrl_c.requested, device):
                log(f"stopping at step {step}: " + ("time budget of %g s used up" % config.max_seconds if time_is_up
                                                     else "interrupted (Ctrl-C)"))
                break
            if batch is None:
                wait_start = time.perf_counter()
                batch = next(batch_iter, None)
                window["wait"] += time.perf_counter() - wait_start
                if batch is None:
                    log(f"the batch source ended at step {step}")
                    break
            x = normalize_clips(batch.clips, device)  # (B, ρ, C, T, H, W) float32, normalised
            if x.shape[1] != num_clips:
                raise ConfigError(f"ρ changed mid-stream: {x.shape[1]} clips per video, expected {num_clips}")
            lr = get_lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            scalars = raw_model.on_step_start(step, config.max_steps)
            with autocast():
                loss = model(x)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --base-lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            raw_model.on_after_backward(step)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            last_position = {"epoch": int(batch.epoch), "step": int(batch.step)}
            if videos_file is not None:
                videos_file.write(json.dumps({"step": step, **batch_record(batch)}) + "\n")
                videos_file.flush()
            window["clips"] += x.shape[0] * x.shape[1] * ctx.world_size
            batch = None

            loss_value = loss.detach().float()
            tdist.all_reduce_sum_(loss_value)
            loss_mean = loss_value.item() / ctx.world_size
            result.losses.append(loss_mean)
            window["loss"] += loss_mean
            window["n"] += 1
            if step % config.log_every_steps == 0 or step == config.max_steps:
                write_metrics(lr, scalars)
            bar.update(1)
            if step % config.checkpoint_every_steps == 0 and step < config.max_steps:
                save(step)
    except KeyboardInterrupt:
        interrupted = True
        log(f"aborted during step {step + 1}: not saved (a half-applied step would not resume exactly); "
            "the last complete checkpoint is kept")
    finally:
        ctrl_c.__exit__()
        bar.close()
    if window["n"] > 0 and not interrupted:  # steps since the last record (the time budget stopped the loop)
        write_metrics(lr, scalars)
    if videos_file is not None:
        videos_file.write(json.dumps({"final_step": step, "weights_sha256": weights_digest(raw_model)}) + "\n")
        videos_file.close()
    if not interrupted:
        result.checkpoint_path = save(step)
        if result.checkpoint_path is not None:
            log(f"saved {result.checkpoint_path} at step {step}")
    if metrics_file is not None:
        metrics_file.close()
    if writer is not None:
        writer.close()
    result.final_step = step
    return result
