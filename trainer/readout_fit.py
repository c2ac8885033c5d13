"""The readout protocols' training: learning-rate schedules and a resumable, step-bounded SGD loop
(``fit``) for a ``trainer.readout.VideoClassifier``."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from trainer.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from trainer.readout import ReadoutError, VideoClassifier
from trainer.utils import linear_warmup_lr, normalize_clips, warmup_cosine_lr

IGNORED_ON_RESUME = ("resume", "max_seconds", "stop_after_steps", "max_test_batches", "threads", "out_dir")
"""Settings a resumed run may change (how long this invocation runs, not what it computes)."""


# ----------------------------------------------------------------------------- schedules


def step_lr(step: int, *, base_lr: float, milestones_steps: Iterable[int], factor: float = 0.1) -> float:
    """``base_lr × factor^(milestones passed)``: the paper's fine-tuning schedule (×0.1 at epochs 60, 120, 180 of 200)."""
    return base_lr * factor ** sum(1 for m in milestones_steps if step >= m)


def lr_schedule(schedule: str, *, max_steps: int, base_lr: float, warmup_steps: int, warmup_start_lr: float,
                final_lr: float, milestones: Iterable[float] = ()) -> Callable[[int], float]:
    """The learning rate as a function of the step: 'cosine' (linear warm-up, then half-cosine to
    ``final_lr``) or 'step' (warm-up, then ×0.1 at each fraction of ``max_steps`` in ``milestones``)."""
    if schedule == "cosine":
        return lambda step: warmup_cosine_lr(step, max_steps, base_lr=base_lr, warmup_steps=warmup_steps,
                                             warmup_start_lr=warmup_start_lr, final_lr=final_lr)
    if schedule == "step":
        steps = [round(f * max_steps) for f in milestones]

        def lr(step: int) -> float:
            if warmup_steps > 0 and step < warmup_steps:
                return linear_warmup_lr(step, warmup_steps, warmup_start_lr, base_lr)
            return step_lr(step, base_lr=base_lr, milestones_steps=steps)

        return lr
    raise ReadoutError(f"schedule ({schedule!r}) must be 'cosine' or 'step'")


# ----------------------------------------------------------------------------- the loop


@dataclass
class FitResult:
    """What a readout training run did."""

    steps_done: int
    """Optimizer steps completed (resumed runs count the earlier ones too)."""
    max_steps: int
    completed: bool
    """False when the ``max_seconds`` safety net or Ctrl-C cut the run before ``max_steps``."""
    first_step: int = 0
    stopped_by: str | None = None
    """Why a run stopped before ``max_steps``: '--stop-after-steps', 'the --max-seconds safety net' or 'Ctrl-C'."""
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def fit(model: VideoClassifier, source: Any, *, max_steps: int, lr_at: Callable[[int], float], weight_decay: float,
        momentum: float, device: torch.device, out_dir: Path, resume: bool, config: dict[str, Any],
        checkpoint_every_steps: int = 200, max_seconds: float = 0.0, log_every_steps: int = 20,
        stop_after_steps: int | None = None, log_prefix: str = "readout") -> FitResult:
    """Train ``model``'s trainable parameters with SGD (momentum, no Nesterov) on ``source`` for
    ``max_steps`` steps; cross-entropy on every clip of a batch (each clip carries its video's label).

    Resumable: ``out_dir/last.pt`` holds the model, optimizer, step, config, RNG states and the
    stream position, written every ``checkpoint_every_steps`` and at the end; ``resume`` continues
    from it (its ``config`` must equal ``config`` but for the run length), so a resumed run sees the
    same batches and ends with the same weights as one never stopped. ``max_seconds`` (> 0) is a
    safety net: it stops the run (saved, resumable) and the result says ``completed=False``;
    ``stop_after_steps`` stops this invocation after that many steps the same way (a run in parts), and so
    does a first Ctrl-C (after the current step; a second one aborts).
    """
    params = model.head_parameters()
    optimizer = torch.optim.SGD(params, lr=lr_at(0), momentum=momentum, weight_decay=weight_decay)
    start = 0
    if resume and (out_dir / "last.pt").is_file():
        state = load_checkpoint(out_dir)
        saved = {k: v for k, v in state["config"].items() if k not in IGNORED_ON_RESUME}
        wanted = {k: v for k, v in config.items() if k not in IGNORED_ON_RESUME}
        if saved != wanted:
            diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise ReadoutError(f"--resume: {out_dir / 'last.pt'} was written with other settings ({', '.join(diff)}); "
                               "use the same flags or another --out-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        set_rng_state(state["rng"])
        if state.get("stream") is not None and hasattr(source, "load_state_dict"):
            source.load_state_dict(state["stream"])

    def save(step: int) -> None:
        stream = source.state_dict() if hasattr(source, "state_dict") else None
        save_checkpoint(out_dir, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                  "config": config, "rng": rng_state(), "stream": stream})

    model.train()
    result = FitResult(steps_done=start, max_steps=max_steps, completed=start >= max_steps, first_step=start)
    began = time.monotonic()
    step = start
    iterator = iter(source)
    from trainer.interrupt import GracefulInterrupt

    with GracefulInterrupt() as ctrl_c:
        while step < max_steps:
            if stop_after_steps is not None and step - start >= stop_after_steps:
                print(f"[{log_prefix}] stopping after {stop_after_steps} steps (--stop-after-steps) at step {step} of "
                      f"{max_steps}; continue with --resume", file=sys.stderr)
                result.stopped_by = "--stop-after-steps"
                break
            if max_seconds > 0 and time.monotonic() - began > max_seconds:
                print(f"[{log_prefix}] safety net: --max-seconds {max_seconds:g} reached at step {step} of {max_steps}; "
                      "the run is saved and counts as failed (resume with --resume)", file=sys.stderr)
                result.stopped_by = "the --max-seconds safety net"
                break
            if ctrl_c.requested:  # first Ctrl-C: this step finished; saved below, resumable
                result.stopped_by = "Ctrl-C"
                break
            batch = next(iterator)
            x = normalize_clips(batch.clips, device)  # (B, ρ, C, T, H, W)
            labels = torch.as_tensor(batch.label).long().to(device).repeat_interleave(x.shape[1])  # (B·ρ,)
            if hasattr(batch, "release"):
                batch.release()
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(x.flatten(0, 1)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.losses.append(loss.item())
            step += 1
            if step % log_every_steps == 0 or step == max_steps:
                print(json.dumps({"step": step, "loss": round(result.losses[-1], 5), "lr": lr}), file=sys.stderr, flush=True)
            if step % checkpoint_every_steps == 0 and step < max_steps:
                save(step)
    save(step)
    result.steps_done, result.completed = step, step >= max_steps
    result.seconds = time.monotonic() - began
    return result


def steps_from_epochs(epochs: float, steps_per_epoch: int) -> int:
    """``max(1, round(epochs × steps_per_epoch))``."""
    return max(1, math.ceil(epochs * steps_per_epoch - 1e-9))
