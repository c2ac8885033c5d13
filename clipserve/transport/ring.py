"""POSIX shared-memory segments holding a ring of fixed-size batch slots (Linux, ``/dev/shm``).

One segment per consumer holds ``num_slots`` slots of ``BatchLayout.slot_size_bytes`` each; slot
``k`` starts at byte ``k * slot_size_bytes``. Which slot is free or taken is decided by the channel
(:mod:`clipserve.transport.channel`), not by bytes in the segment.

Segments are files in ``/dev/shm`` (what ``shm_open`` uses), created here with
``os.open(O_CREAT | O_EXCL, 0o600)`` + ``mmap`` instead of ``multiprocessing.shared_memory`` so that
no ``resource_tracker`` unlinks them behind our back. Their names are unique to a service instance::

    clipserve-<uid>-<pid>-<instance token>-<consumer id>

``cleanup_stale_segments()`` removes entries of this user whose ``<pid>`` is no longer alive (left
by a crashed service); the service calls it once at start. The channel's private socket directories
live in the same directory with the same prefix, so the same function removes them too. (Caveat:
containers with separate pid namespaces that share one ``/dev/shm`` and one uid must not both run
services, since a pid from another namespace looks dead.)

Memory is reserved with ``posix_fallocate`` at creation, so a full ``/dev/shm`` gives a clear
:class:`~clipserve.errors.RingError` at attach time instead of a ``SIGBUS`` in the middle of a copy.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

from clipserve.errors import RingError

#: Directory of POSIX shared memory on Linux.
SHM_DIR = Path("/dev/shm")
#: Prefix of every name clipserve puts into ``SHM_DIR``.
NAME_PREFIX = "clipserve"
#: Consumer ids and instance tokens are limited to these characters (they become file names).
_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,32}$")
#: Extra bytes that must stay free in /dev/shm beyond the segment itself.
FREE_SPACE_MARGIN_BYTES = 16 << 20


def new_instance_token() -> str:
    """A random 8-hex-digit token identifying one service instance."""
    return secrets.token_hex(4)


def _check_token(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _TOKEN_PATTERN.match(value):
        raise ValueError(f"{kind} ({value!r}) must be 1 to 32 characters from [A-Za-z0-9_]")


def instance_prefix(instance_token: str, *, pid: int | None = None, uid: int | None = None) -> str:
    """``clipserve-<uid>-<pid>-<instance token>``: the start of every name of one service instance."""
    _check_token("instance_token", instance_token)
    uid = os.getuid() if uid is None else uid
    pid = os.getpid() if pid is None else pid
    return f"{NAME_PREFIX}-{uid}-{pid}-{instance_token}"


def segment_name(instance_token: str, consumer_id: str, *, pid: int | None = None, uid: int | None = None) -> str:
    """Name (in ``/dev/shm``) of the ring segment of one consumer of this service instance."""
    _check_token("consumer_id", consumer_id)
    return f"{instance_prefix(instance_token, pid=pid, uid=uid)}-{consumer_id}"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie.

    A killed service's processes can stay zombies for a long time (a container's pid 1 that does
    not reap orphans, or a slow init): they are dead, and their segments are stale.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile, or no /proc (not Linux): trust kill()
        return not Path("/proc").is_dir()
    return stat_line[stat_line.rindex(")") + 2:][:1] not in ("Z", "X")


def cleanup_stale_segments(shm_dir: Path = SHM_DIR, *, this_process_is_new: bool = False) -> list[str]:
    """Remove this user's clipserve segments and socket directories whose creating process is dead.

    Only names ``clipserve-<uid>-<pid>-...`` with ``<uid>`` = our uid, owned by us, and ``<pid>`` not
    alive are touched. Call once when a service starts, before it creates any ring.

    Args:
        this_process_is_new: also remove entries named with *this* process id. A service restarted
            in a container often gets the pid of the crashed one (e.g. 1 or 7), so its leftovers
            would look alive; a process that has created nothing yet owns none of them.

    Returns:
        The removed names (file or directory names inside ``shm_dir``).
    """
    uid = os.getuid()
    pattern = re.compile(rf"^{NAME_PREFIX}-{uid}-(\d+)-")
    removed: list[str] = []
    try:
        entries = list(os.scandir(shm_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match:
            continue
        pid = int(match.group(1))
        if _pid_alive(pid) and not (this_process_is_new and pid == os.getpid()):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if info.st_uid != uid:
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        except FileNotFoundError:
            continue
    return removed


def shm_free_bytes(shm_dir: Path = SHM_DIR) -> int:
    """Bytes an unprivileged process may still allocate in ``shm_dir``."""
    info = os.statvfs(shm_dir)
    return info.f_bavail * info.f_frsize


def _not_enough_space(name: str, size_bytes: int, free_bytes: int | None) -> RingError:
    free = "too few" if free_bytes is None else f"{free_bytes / 2**20:.0f} MiB"
    return RingError(
        f"not enough shared memory for ring {name!r}: it needs {size_bytes} bytes "
        f"({size_bytes / 2**20:.0f} MiB = num_slots x slot_size_bytes) but {SHM_DIR} has {free} free. "
        "Lower --prefetch-batches (fewer slots) or --batch-size (smaller slots), or enlarge /dev/shm "
        "(docker: --shm-size)."
    )


class SharedSegment:
    """One memory-mapped file in ``/dev/shm`` (a POSIX shared-memory object), mode 0600.

    Use :meth:`create` (producer) or :meth:`open` (consumer). ``buffer`` is the writable ``mmap``.
    """

    def __init__(self, name: str, fd: int, size_bytes: int, *, owner: bool, shm_dir: Path) -> None:
        self.name = name
        self.size_bytes = size_bytes
        self.owner = owner
        self.path = shm_dir / name
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        try:
            self.buffer: mmap.mmap = mmap.mmap(fd, size_bytes, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._closed = False

    @classmethod
    def create(cls, name: str, size_bytes: int, *, shm_dir: Path = SHM_DIR) -> SharedSegment:
        """Create segment ``name`` of ``size_bytes`` (owner-only, 0600), reserving its memory.

        Raises:
            RingError: the name exists already, or ``/dev/shm`` lacks space (message names the
                size needed and the flags that lower it).
        """
        if size_bytes <= 0:
            raise ValueError(f"size_bytes ({size_bytes}) must be > 0")
        if "/" in name or not name.startswith(NAME_PREFIX + "-"):
            raise ValueError(f"segment name {name!r} must start with {NAME_PREFIX!r}- and contain no '/'")
        if not shm_dir.is_dir():
            raise RingError(f"{shm_dir} does not exist: POSIX shared memory (Linux /dev/shm) is required")
        free_bytes = shm_free_bytes(shm_dir)
        if free_bytes < size_bytes + FREE_SPACE_MARGIN_BYTES:
            raise _not_enough_space(name, size_bytes, free_bytes)
        path = shm_dir / name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise RingError(f"shared-memory segment {name!r} exists already") from None
        try:
            os.fchmod(fd, 0o600)
            try:
                os.posix_fallocate(fd, 0, size_bytes)
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.ENOMEM):
                    raise _not_enough_space(name, size_bytes, None) from None
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, size_bytes)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        try:
            return cls(name, fd, size_bytes, owner=True, shm_dir=shm_dir)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    @classmethod
    def open(cls, name: str, min_size_bytes: int, *, shm_dir: Path = SHM_DIR) -> SharedSegment:
        """Map the existing segment ``name`` (read-write); it must be ours and ``>= min_size_bytes``.

        Raises:
            RingError: missing (service gone), not owned by this user, or smaller than expected.
        """
        if "/" in name or not name.startswith(NAME_PREFIX + "-"):
            raise RingError(f"segment name {name!r} is not a clipserve segment name")
        try:
            fd = os.open(shm_dir / name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RingError(f"shared-memory segment {name!r} does not exist (service restarted or gone?)") from None
        except PermissionError:
            raise RingError(
                f"no permission to open shared-memory segment {name!r}: the consumer must run as the "
                "same user as the service"
            ) from None
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            os.close(fd)
            raise RingError(f"shared-memory segment {name!r} belongs to uid {info.st_uid}, not to us")
        if info.st_size < min_size_bytes:
            os.close(fd)
            raise RingError(f"shared-memory segment {name!r} has {info.st_size} bytes, expected {min_size_bytes}")
        return cls(name, fd, min_size_bytes, owner=False, shm_dir=shm_dir)

    def close(self) -> None:
        """Unmap (if no numpy/torch view of the buffer is still alive; otherwise leave it to GC)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.buffer.close()
        except BufferError:
            pass  # views still exported; the mapping goes away with the last of them

    def unlink(self) -> None:
        """Remove the name from ``/dev/shm`` (existing mappings stay valid). Missing is fine."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
