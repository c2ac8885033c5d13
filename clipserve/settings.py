"""The service's configuration (``clipserve start``): one flat pydantic-settings model.

Every field maps one-to-one onto a ``clipserve start`` flag (``crop_size_pixels`` ↔ ``--crop-size``)
and onto an environment variable with the ``CLIPSERVE_`` prefix (``CLIPSERVE_CROP_SIZE_PIXELS``).
Values may also come from a config file (TOML or JSON, flat keys = field names).
Priority, highest first: command-line flags, environment, config file, defaults.

``ServiceConfig.sampling()`` and ``ServiceConfig.augment()`` build the planner's
``SamplingConfig`` / ``AugmentConfig`` from it, so the service never has a second copy of those rules.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.errors import ConfigError

ENV_PREFIX = "CLIPSERVE_"
LOOPBACK_HOSTS = frozenset({"localhost"})


class ServiceConfig(BaseSettings):
    """Everything ``clipserve start`` needs: dataset, sampling, augmentation, batching, sharding, HTTP."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # dataset
    dataset: str = Field(
        "k400", description="dataset adapter name: k400, k600, k700, folder, ucf101, hmdb51 or ssv2"
    )
    root: Path = Field(..., description="dataset root directory")
    split: str = Field("train", description="dataset split to serve, e.g. 'train' or 'val'")
    split_id: int = Field(
        1, description="official train/test split of ucf101 and hmdb51, 1..3 (must be 1 for the others)"
    )
    index_cache_path: Path | None = Field(
        None, description="index cache file; None = the index's default location (reused across starts)"
    )
    # execution
    backend: Literal["auto", "pyav", "dali"] = Field(
        "auto", description="executor: pyav (CPU), dali (GPU/NVDEC, or CPU for VP9), auto (DALI on a GPU)"
    )
    workers: int | None = Field(
        None, ge=1, le=1024, description="decode worker processes, split across a job's ranks; None = CPU cores"
    )
    prefetch_batches: int = Field(4, ge=1, le=1024, description="batches decoded ahead per consumer (ring slots)")
    control_plane_nice: int = Field(
        19, ge=0, le=19,
        description="nice value added to the REST control plane's process (0 = the data plane's CPU priority; "
                    "19 = requests take only the CPU the decode workers and feeders leave)",
    )
    # sampling (SamplingConfig)
    num_clips: int = Field(2, description="ρ, clips per video")
    frames_per_clip: int = Field(8, description="T, frames per clip")
    frame_stride: int = Field(8, description="τ, frames of the target-fps timeline between sampled frames")
    target_fps: float = Field(30.0, description="frames per second of the timeline the stride counts in")
    max_span_seconds: float | None = Field(None, description="t_max, largest distance between clip starts, seconds")
    min_span_seconds: float = Field(0.0, description="smallest distance between earliest and latest clip start, seconds")
    temporal_sampling: Literal["random", "centre"] = Field(
        "random", description="clip starts: 'random' (training) or 'centre' (evenly placed; ρ=1: the centre clip)"
    )
    # augmentation (AugmentConfig)
    crop_size_pixels: int = Field(224, description="output height and width of every clip frame, pixels")
    eval_mode: bool = Field(False, description="evaluation view: centre crop, no random augmentation")
    # batching and order
    batch_size: int = Field(8, ge=1, le=4096, description="videos per batch (B)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of plans and epoch order")
    shard_id: int = Field(0, ge=0, description="this node's shard of every epoch")
    num_shards: int = Field(1, ge=1, description="number of nodes (shards) the epoch is split into")
    # HTTP
    host: str = Field("127.0.0.1", description="address the control plane listens on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the control plane (0 = any free port)")
    token: str | None = Field(None, description="bearer token required on every route but /healthz")

    @field_validator("split_id")
    @classmethod
    def _split_id(cls, v: int) -> int:
        if not 1 <= v <= 3:
            raise ValueError(f"split_id ({v}) must be in [1, 3]")
        return v

    @field_validator("token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 8:
            raise ValueError("token must be at least 8 characters")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ServiceConfig":
        if self.shard_id >= self.num_shards:
            raise ValueError(f"shard_id ({self.shard_id}) must be < num_shards ({self.num_shards})")
        self.sampling()
        self.augment()
        if not is_loopback_host(self.host) and self.token is None:
            raise ValueError(
                f"host {self.host!r} is not a loopback address: refusing to serve without --token "
                "(set --token / CLIPSERVE_TOKEN, or use --host 127.0.0.1)"
            )
        return self

    def sampling(self) -> SamplingConfig:
        """The planner's sampling config (ρ, T, τ, fps, span)."""
        return SamplingConfig(
            num_clips=self.num_clips,
            frames_per_clip=self.frames_per_clip,
            frame_stride=self.frame_stride,
            target_fps=self.target_fps,
            max_span_seconds=self.max_span_seconds,
            min_span_seconds=self.min_span_seconds,
            temporal_sampling=self.temporal_sampling,
        )

    def augment(self) -> AugmentConfig:
        """The planner's augmentation config: the paper's aug+ or, with ``eval_mode``, the centre crop."""
        if self.eval_mode:
            return AugmentConfig.evaluation(self.crop_size_pixels)
        return AugmentConfig(crop_size_pixels=self.crop_size_pixels)

    def resolved_workers(self) -> int:
        """Decode worker processes: ``workers`` or the number of CPU cores."""
        if self.workers is not None:
            return self.workers
        if hasattr(os, "sched_getaffinity"):
            return max(1, len(os.sched_getaffinity(0)))
        return max(1, os.cpu_count() or 1)

    def public_dump(self) -> dict[str, Any]:
        """The config as JSON-able data without secrets (for ``/v1/info``)."""
        data = self.model_dump(mode="json", exclude={"token"})
        data["token_required"] = self.token is not None
        return data


def is_loopback_host(host: str) -> bool:
    """True for 'localhost' and loopback IP literals (127.0.0.0/8, ::1)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if path.suffix.lower() == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    if path.suffix.lower() == ".json":
        return JsonConfigSettingsSource(settings_cls, json_file=path)
    raise ConfigError(f"config file {path} must end in .toml or .json")


def load_service_config(overrides: dict[str, Any], config_file: Path | None = None) -> ServiceConfig:
    """Merge flags (``overrides``), ``CLIPSERVE_*`` environment variables and an optional config file.

    Raises ``ConfigError`` naming the offending field(s) when a value is invalid.
    """
    if config_file is not None:
        config_file = Path(config_file)
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        try:
            if config_file.suffix.lower() == ".json":
                json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"config file {config_file} is not valid JSON: {exc}") from exc

    class _WithFile(ServiceConfig):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(_file_source(settings_cls, config_file))
            return tuple(sources)

    try:
        merged = _WithFile(**overrides)
        return ServiceConfig.model_validate(merged.model_dump())
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"cannot read config: {exc}") from exc


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing" and loc != "config":
            msg = f"missing: give it as a flag, as {ENV_PREFIX}{loc.upper()} or in the config file"
        parts.append(f"{loc}: {msg}" if loc != "config" else msg)
    return "invalid service config: " + "; ".join(parts)

