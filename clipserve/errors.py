"""All of clipserve's exceptions, under one base class."""

from __future__ import annotations


class ClipserveError(Exception):
    """Base class of every error clipserve raises on purpose."""


class ConfigError(ClipserveError, ValueError):
    """A configuration value is out of range or inconsistent; the message names field, value and range."""


class DatasetError(ClipserveError):
    """The dataset root or its annotation files cannot be used (missing, empty, unreadable)."""


class IndexCacheError(ClipserveError):
    """The on-disk index cache cannot be opened, read or written."""


class DecodeError(ClipserveError):
    """A video could not be decoded as planned (corrupt, truncated, unsupported codec, ...)."""


class UnsupportedCodecError(DecodeError):
    """The chosen backend cannot decode this codec; the message says which backend to use instead."""


class RingError(ClipserveError):
    """Base class for shared-memory ring errors."""


class RingFullError(RingError):
    """No free slot appeared within the timeout."""


class RingClosedError(RingError):
    """The ring was closed by its producer (service shut down)."""


class LayoutChangedError(RingError):
    """The service's batch layout changed since this consumer attached (e.g. different ρ or T)."""


class WorkerCrashError(ClipserveError):
    """The process decoding a video died (signal, exit, out of memory); not a property of the file."""


class TaskTimeoutError(WorkerCrashError, TimeoutError):
    """One task (decoding a video, probing a file) ran past its timeout; its worker was killed and replaced."""


class ExecutorClosedError(ClipserveError):
    """The executor (or worker pool) was closed, or cannot run, before the task ran."""
