"""Flat, typed trainer config: defaults → objective preset (paper) → profile → ``--key value`` flags.

Every field is a typed value whose description notes its unit or meaning (the ``--help`` text; the
flags are generated from the fields by ``clipserve.config_cli``); the resolved config is logged
and saved in each checkpoint. Unknown keys and values of the wrong type are rejected with a clear
message.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from clipserve.config_cli import add_model_arguments, format_validation_error, parse_bool


OBJECTIVES = ("moco", "byol", "simclr", "swav")
"""The four objectives' names (``--objective``); each is built by ``trainer.objectives.build_objective``."""
BACKBONES = ("tiny", "r3d_18", "r2plus1d_18", "mvit_v2_s", "slow_r50")
"""The backbones' names (``--backbone``); each is built by ``trainer.backbones.build_backbone``."""


class ConfigError(ValueError):
    """A bad flag, key or value (the CLI prints it and exits with status 2)."""


@dataclass(config=ConfigDict(extra="forbid"))
class TrainConfig:
    """Every trainer setting, typed, with its meaning and unit as its description (the ``--help`` text).

    A pydantic dataclass: ``dataclasses.asdict`` / ``replace`` work, flags come from the fields
    (``clipserve.config_cli.add_model_arguments``).
    """

    # --- what to train
    objective: str = Field("moco", description="moco | byol | simclr | swav")
    backbone: str = Field("tiny", description="tiny | r3d_18 | r2plus1d_18 | mvit_v2_s | slow_r50")
    profile: str = Field("paper", description="paper (the paper's hyperparameters) | cpu (scaled down for CPU demos)")
    # --- data
    server: str = Field("", json_schema_extra={"nargs": "+"}, description=(
        "clipserve URL (ClipStream), several URLs of the services that serve the shards of one epoch (space-separated; "
        "decode hosts), or 'synthetic' for the built-in synthetic stream; a service's token comes from CLIPSERVE_TOKEN"))
    service_layout: str = Field("auto", description=(
        "per-node (each node's ranks are consumers LOCAL_RANK of LOCAL_WORLD_SIZE of their node's service, whose shard "
        "is the node rank) | global (consumers RANK of WORLD_SIZE of every --server) | auto (per-node when the one "
        "service reports num_shards > 1, else global); a layout that would leave videos unread is refused"))
    transport: str = Field("shm", description="shm (same host, zero copy) | http (any host)")
    attach_timeout_seconds: float = Field(
        120.0, description="keep retrying to attach (and to re-attach after a service restart) this long; "
                           "a line every 5 s says so (ClipStream's reconnect_timeout_seconds)")
    synthetic_batch_size: int = Field(8, description="videos per batch per rank (synthetic stream only)")
    synthetic_num_clips: int = Field(2, description="ρ (synthetic stream only)")
    synthetic_frames: int = Field(8, description="T (synthetic stream only)")
    synthetic_size_pixels: int = Field(64, description="H = W (synthetic stream only)")
    synthetic_num_videos: int = Field(64, description="videos per epoch (synthetic stream only)")
    # --- length
    max_steps: int = Field(1000, description="optimizer steps; LR and momentum schedules span exactly this many")
    max_seconds: float = Field(0.0, description="also stop after this many wall-clock seconds of training (0: no limit)")
    # --- optimizer (paper-spec §3)
    optimizer: str = Field("sgd", description="sgd | lars")
    base_lr: float = Field(0.4, description="learning rate for reference_batch_size videos per global batch")
    reference_batch_size: int = Field(512, description="lr = base_lr * global_batch / reference (0: no scaling)")
    weight_decay: float = Field(1e-4, description="not applied to biases and norm layers")
    sgd_momentum: float = Field(0.9, description="momentum of SGD (and of LARS)")
    nesterov: bool = Field(True, description="Nesterov momentum")
    lars_trust_coefficient: float = Field(0.001, description="LARS trust (not on biases / norm layers)")
    warmup_fraction: float = Field(0.175, description="35 of 200 epochs of linear warm-up")
    warmup_start_lr: float = Field(0.001, description="scaled like base_lr")
    final_lr: float = Field(0.0, description="end of the half-cosine")
    # --- heads and losses
    temperature: float = Field(0.1, description="α for MoCo / SimCLR / SwAV")
    output_dim: int = Field(128, description="embedding dimension (BYOL: 256)")
    mlp_hidden_dim: int = Field(2048, description="hidden width of projection / prediction MLPs (BYOL: 4096)")
    mlp_num_layers: int = Field(3, description="MoCo / SimCLR / SwAV projection depth")
    mlp_batch_norm: bool = Field(False, description="SimCLR MLP BN (paper: on; PySlowFast config: off)")
    loss_reduction: str = Field("mean", description="over the ρ queries: mean (paper) | sum (PySlowFast)")
    momentum_start: float = Field(0.994, description="momentum encoder, half-cosine to momentum_end (MoCo 0.994, BYOL 0.996)")
    momentum_end: float = Field(1.0, description="momentum encoder momentum at the last step")
    moco_queue_size: int = Field(65536, description="negatives per rank")
    moco_positives: str = Field("eq1", description="eq1 (paper: all positives in one numerator) | per_positive (PySlowFast)")
    moco_shuffle_bn: bool = Field(True, description="shuffle keys across ranks for the momentum encoder's BN")
    simclr_pairs: str = Field("all", description="all ρ(ρ−1) ordered pairs (paper) | consecutive (PySlowFast SEQUENTIAL)")
    simclr_positives: str = Field(
        "eq1", description="eq1 (paper: all positives in one numerator) | supcon (each positive's log-prob averaged)")
    swav_num_prototypes: int = Field(1000, description="SwAV prototypes (count)")
    swav_epsilon: float = Field(0.05, description="Sinkhorn regularisation")
    swav_sinkhorn_iterations: int = Field(3, description="Sinkhorn-Knopp iterations")
    swav_num_assign_clips: int = Field(0, description="clips that get codes: 0 = all ρ (paper); 2 = PySlowFast")
    swav_queue_size: int = Field(0, description="queued embeddings per assigned clip and rank (0: no queue)")
    swav_queue_start_step: int = Field(0, description="queue used from this step (once full)")
    swav_freeze_prototypes_steps: int = Field(0, description="prototype gradients dropped before this step")
    sync_batchnorm: bool = Field(False, description="SyncBN across ranks (BYOL / SimCLR / SwAV in the paper)")
    # --- system
    device: str = Field("auto", description="auto | cpu | cuda")
    seed: int = Field(0, description="model init and any trainer-side randomness (offset by rank)")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms(True)")
    mixed_precision: str = Field("none", description="none | bf16 | fp16 (CUDA autocast)")
    # --- output
    checkpoint_dir: str = Field("trainer-out", description="checkpoints + metrics.jsonl (+ TensorBoard if installed)")
    resume: bool = Field(False, description="continue from checkpoint_dir/last.pt")
    checkpoint_every_steps: int = Field(500, description="also saved at the end and on Ctrl-C")
    log_every_steps: int = Field(10, description="JSON-lines metrics cadence")
    progress: bool = Field(True, description="tqdm bar on rank 0")
    record_videos: bool = Field(False, description=(
        "every rank writes checkpoint_dir/videos-rank<R>.jsonl: epoch, step, video_index, is_padding and the clips' "
        "sha256 of each batch it trains on, then a sha256 of its final weights (to check coverage and DDP agreement)"))

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` for any out-of-range value; returns ``self``."""
        choices = {
            "objective": OBJECTIVES,
            "backbone": BACKBONES,
            "profile": ("paper", "cpu"),
            "transport": ("shm", "http"),
            "service_layout": ("auto", "per-node", "global"),
            "optimizer": ("sgd", "lars"),
            "loss_reduction": ("mean", "sum"),
            "moco_positives": ("eq1", "per_positive"),
            "simclr_pairs": ("all", "consecutive"),
            "simclr_positives": ("eq1", "supcon"),
            "device": ("auto", "cpu", "cuda"),
            "mixed_precision": ("none", "bf16", "fp16"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        positive = ("max_steps", "output_dim", "mlp_hidden_dim", "mlp_num_layers", "moco_queue_size", "swav_num_prototypes",
                    "swav_sinkhorn_iterations", "checkpoint_every_steps", "log_every_steps", "synthetic_batch_size",
                    "synthetic_frames", "synthetic_size_pixels", "synthetic_num_videos")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be > 0; got {getattr(self, key)}")
        if self.synthetic_num_clips < 2:
            raise ConfigError(f"--synthetic-num-clips must be >= 2; got {self.synthetic_num_clips}")
        for key in ("temperature", "swav_epsilon", "base_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be > 0; got {getattr(self, key)}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"--warmup-fraction must be in [0, 1); got {self.warmup_fraction}")
        if not (0.0 <= self.momentum_start <= 1.0 and 0.0 <= self.momentum_end <= 1.0):
            raise ConfigError(f"momentum_start/end must be in [0, 1]; got {self.momentum_start}, {self.momentum_end}")
        for key in ("reference_batch_size", "swav_num_assign_clips", "swav_queue_size", "swav_queue_start_step",
                    "swav_freeze_prototypes_steps", "weight_decay", "warmup_start_lr", "final_lr",
                    "attach_timeout_seconds"):
            if getattr(self, key) < 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 0; got {getattr(self, key)}")
        return self


# The paper's hyperparameters per objective (paper-spec §3; lr for a 512-video batch).
PRESETS: dict[str, dict[str, Any]] = {
    "moco": dict(optimizer="sgd", base_lr=0.4, weight_decay=1e-4, temperature=0.1, output_dim=128, mlp_hidden_dim=2048,
                 mlp_num_layers=3, momentum_start=0.994, sync_batchnorm=False),
    "byol": dict(optimizer="lars", base_lr=4.8, weight_decay=1e-6, output_dim=256, mlp_hidden_dim=4096,
                 momentum_start=0.996, sync_batchnorm=True),
    "simclr": dict(optimizer="lars", base_lr=4.8, weight_decay=1e-6, temperature=0.1, output_dim=128, mlp_hidden_dim=2048,
                   mlp_num_layers=3, mlp_batch_norm=True, sync_batchnorm=True),
    "swav": dict(optimizer="lars", base_lr=4.8, weight_decay=1e-6, temperature=0.1, output_dim=128, mlp_hidden_dim=2048,
                 mlp_num_layers=3, swav_num_prototypes=1000, swav_epsilon=0.05, swav_sinkhorn_iterations=3,
                 sync_batchnorm=True),
}

# CPU demos (batches of ~8-16 videos on one machine): small heads and queue, no linear lr scaling,
# and SGD for every objective: LARS (trust 0.001) is meant for 512-video batches; at 16 videos its
# steps are too small to learn in a CPU budget. Checked on the synthetic stream (tiny backbone,
# B=16, ρ=2, 80 steps): kNN top-1 from 0.46 (random init) to 1.0 for all four objectives.
_CPU_COMMON: dict[str, Any] = dict(optimizer="sgd", reference_batch_size=0, warmup_start_lr=0.0, warmup_fraction=0.05)
CPU_PROFILE: dict[str, dict[str, Any]] = {
    "moco": dict(_CPU_COMMON, base_lr=0.05, mlp_hidden_dim=256, moco_queue_size=4096),
    "byol": dict(_CPU_COMMON, base_lr=0.1, mlp_hidden_dim=512),
    "simclr": dict(_CPU_COMMON, base_lr=0.1, mlp_hidden_dim=256),
    "swav": dict(_CPU_COMMON, base_lr=0.1, mlp_hidden_dim=256, swav_num_prototypes=100),
}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_DEFAULTS = {name: info.default for name, info in TrainConfig.__pydantic_fields__.items()}


def _parse_bool(flag: str) -> Callable[[str], bool]:
    return lambda raw: parse_bool(raw, flag)


def _converter(flag: str, kind: type) -> Callable[[str], Any]:
    """The value parser of one flag; its errors name the flag, the expected type and the value."""
    if kind is bool:
        return _parse_bool(flag)

    def parse(raw: str) -> Any:
        try:
            return kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {kind.__name__}, got {raw!r}") from None

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``ConfigError`` (with the flag-first messages of this module)."""

    def error(self, message: str) -> NoReturn:
        match = re.match(r"argument ([^:]+): (.*)", message)
        if match:
            flag, detail = match.group(1).split("/")[0], match.group(2)
            if detail.startswith("expected one argument"):
                raise ConfigError(f"{flag} needs a value")
            if detail.startswith("--"):
                raise ConfigError(detail)
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """``python -m trainer`` flags, one per ``TrainConfig`` field (help = the field's description).

    Fields not given stay out of the namespace: the objective's preset and the profile fill them.
    A boolean flag alone means true (``--resume``); ``--resume false`` or ``--resume=false`` too.
    """
    parser = _Parser(prog="python -m trainer", allow_abbrev=False, add_help=False,
                     usage="python -m trainer --objective {moco,byol,simclr,swav} --server URL [URL ...] "
                           "[--key value ...]",
                     description="Presets: the objective's paper hyperparameters, then --profile, then your flags.")
    add_model_arguments(parser, TrainConfig, converter=_converter, bool_values=True)
    return parser


def _check_key(key: str) -> str:
    name = key.replace("-", "_")
    if name not in _FIELDS:
        close = difflib.get_close_matches(name, list(_FIELDS), n=1)
        hint = f" (did you mean --{close[0].replace('_', '-')}?)" if close else ""
        raise ConfigError(f"unknown option --{key}{hint}")
    return name


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs → typed dict. A boolean flag alone means true."""
    namespace, extras = build_parser().parse_known_args(list(argv))
    for arg in extras:
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected --key value, got {arg!r}")
        _check_key(arg[2:].split("=", 1)[0])
    values = vars(namespace)
    if isinstance(values.get("server"), list):  # --server URL [URL ...]: one string, space-separated
        values["server"] = " ".join(values["server"])
    return values


def make_config(objective: str = "moco", profile: str = "paper", **overrides: Any) -> TrainConfig:
    """Defaults, then the objective's paper preset, then the profile, then ``overrides`` (validated)."""
    unknown = set(overrides) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    if objective not in PRESETS:
        raise ConfigError(f"--objective must be one of {', '.join(PRESETS)}; got {objective!r}")
    if profile not in ("paper", "cpu"):
        raise ConfigError(f"--profile must be paper or cpu; got {profile!r}")
    values: dict[str, Any] = dict(objective=objective, profile=profile)
    values.update(PRESETS[objective])
    if profile == "cpu":
        values.update(CPU_PROFILE[objective])
    values.update(overrides)
    for key, value in values.items():
        expected = type(_DEFAULTS[key])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"--{key.replace('_', '-')} expects {expected.__name__}, got {value!r}")
    return TrainConfig(**values).validate()


def parse_args(argv: Sequence[str]) -> TrainConfig:
    """Command-line flags → validated config (see :func:`make_config` for the precedence)."""
    overrides = parse_overrides(argv)
    objective = overrides.pop("objective", "moco")
    profile = overrides.pop("profile", "paper")
    return make_config(objective, profile, **overrides)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved config (checkpoint ``config`` entry); unknown keys are rejected."""
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"checkpoint config has unknown keys: {', '.join(sorted(unknown))}")
    try:
        return TrainConfig(**values).validate()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, subject="checkpoint config", fields=_FIELDS)) from None


def help_text() -> str:
    """One entry per option with its default and meaning (for ``--help``)."""
    return build_parser().format_help()


__all__ = ["CPU_PROFILE", "ConfigError", "PRESETS", "TrainConfig", "build_parser", "config_from_dict", "help_text",
           "make_config", "parse_args", "parse_overrides"]
