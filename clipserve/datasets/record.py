"""What the index knows about one video (pydantic models shared by index, planner, executors, REST)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class DatasetEntry(BaseModel):
    """One (video, label) pair listed by a dataset adapter; nothing probed yet."""

    model_config = ConfigDict(frozen=True)

    relative_path: str
    """Path of the video file relative to the dataset root, with '/' separators."""
    label_name: str
    """Class name as written in the annotations, e.g. 'passing American football (in game)'."""
    label_id: int
    """Stable integer id: position of ``label_name`` in the sorted list of class names."""


class DatasetListing(BaseModel):
    """What an adapter found under a root: entries that exist, the classes, and rows whose file is missing."""

    entries: list[DatasetEntry]
    class_names: list[str]
    """Sorted class names; ``label_id`` indexes this list."""
    missing_relative_paths: list[str] = []
    """Rows of the annotations whose file does not exist (reported, not fatal)."""


class VideoRecord(BaseModel):
    """One probed video. Frame indices everywhere in clipserve count frames in presentation order,
    exactly as a full sequential decode outputs them (index 0 = first decoded frame)."""

    model_config = ConfigDict(frozen=True)

    relative_path: str
    label_name: str
    label_id: int
    size_bytes: int
    mtime_ns: int
    status: Literal["ok", "broken"]
    broken_reason: str | None = None
    """Why the file is excluded, e.g. 'zero-byte file', 'no video stream (audio-only)'."""

    codec: str = ""
    pixel_format: str = ""
    width_pixels: int = 0
    """Coded width as stored in the stream (before rotation)."""
    height_pixels: int = 0
    """Coded height as stored in the stream (before rotation)."""
    rotation_degrees: int = 0
    """Display rotation from the container's metadata (0, 90, 180, 270), counter-clockwise."""
    has_audio: bool = False

    num_frames: int = 0
    num_frames_source: Literal["packet_scan", "decode", "header", "estimate"] = "packet_scan"
    """Where ``num_frames`` came from: an exact packet scan, a full sequential decode (files whose
    packet timestamps cannot identify frames), the container header, or duration × fps."""
    frame_access: Literal["pts", "sequential"] = "pts"
    """How executors find frame i in this file: 'pts' (packet timestamps identify frames: seek to a
    keyframe and skip) or 'sequential' (count the decoder's output from the first packet)."""
    frame_access_reason: str = ""
    """Why packet timestamps cannot identify frames, e.g. 'packets without pts' ('' for 'pts')."""
    average_fps: float = 0.0
    """Frames per second averaged over the whole stream: (num_frames - 1) / (last pts - first pts)."""
    duration_seconds: float = 0.0
    """Presentation span of the video stream in seconds: last pts - first pts + one frame duration."""
    is_variable_frame_rate: bool = False
    frame_timestamps_seconds: list[float] = []
    """Presentation time of every frame in seconds, relative to the first frame (so [0] == 0.0);
    length ``num_frames``, strictly increasing."""
    keyframe_indices: list[int] = []
    """Frame indices (presentation order) of the keyframes, from packet flags, without decoding."""

    @property
    def display_width_pixels(self) -> int:
        """Width of the upright frame, after applying ``rotation_degrees``."""
        return self.height_pixels if self.rotation_degrees in (90, 270) else self.width_pixels

    @property
    def display_height_pixels(self) -> int:
        """Height of the upright frame, after applying ``rotation_degrees``."""
        return self.width_pixels if self.rotation_degrees in (90, 270) else self.height_pixels
