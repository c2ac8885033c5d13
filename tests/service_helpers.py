"""Helpers for the service tests: a tiny K400-layout dataset, the real service as a subprocess,
and a consumer script run as a separate process.

``running_service(root, ...)`` starts ``python -m clipserve start`` on 127.0.0.1, waits for the
"serving ... at URL" line and for ``/healthz``, yields a ``RunningService`` and stops the process
(SIGTERM, then SIGKILL of its whole process group) on exit.

Run as a script, this module is the consumer process of the tests::

    python tests/service_helpers.py URL --batches N --out FILE [--rank R --world-size W
        --transport shm|http --hold-after K --delay-seconds S]

It writes one JSON line per batch (epoch, step, video_index, is_padding, sha256 of the clips
bytes) to FILE, flushing after each, and exits 0 after N batches. With ``--hold-after K`` it
stops after K batches *without releasing the last slot* and sleeps, so a test can ``kill -9`` it
while it holds a batch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_PATTERN = re.compile(r"serving (\d+) videos at (http://\S+?)/? ")

#: Settings every service test uses: tiny clips, tiny batches, one worker.
SERVICE_SETTINGS: dict[str, Any] = {
    "num_clips": 2,
    "frames_per_clip": 4,
    "frame_stride": 4,
    "crop_size_pixels": 32,
    "batch_size": 2,
    "workers": 1,
    "prefetch_batches": 2,
    "seed": 7,
    "backend": "pyav",
}
_FLAG = {
    "num_clips": "--num-clips",
    "frames_per_clip": "--frames-per-clip",
    "frame_stride": "--frame-stride",
    "crop_size_pixels": "--crop-size",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "prefetch_batches": "--prefetch-batches",
    "seed": "--seed",
    "backend": "--backend",
}


def make_tiny_dataset(root: Path) -> Path:
    """Six training videos (2 classes, 86×64 px and one 64×86 portrait, ≤ 1.5 s) in the K400 layout."""
    from clipserve.sample import build_sample, make_sample_spec

    spec = make_sample_spec(num_classes=2, videos_per_class=4, max_duration_seconds=1.5, frame_scale=0.25, seed=3)
    build_sample(root, spec, workers=1, progress=False)
    return root


def service_args(settings: dict[str, Any] | None = None) -> list[str]:
    """``clipserve start`` flags for ``settings`` (default ``SERVICE_SETTINGS``)."""
    args: list[str] = []
    for key, value in (settings or SERVICE_SETTINGS).items():
        args += [_FLAG[key], str(value)]
    return args


@dataclass
class RunningService:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30.0, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def data_plane_pid(self) -> int:
        """The service's data-plane process (it creates the ring segments, named with its pid)."""
        return data_plane_pid(self.process.pid)


def data_plane_pid(service_pid: int) -> int:
    """The data-plane process of the service ``service_pid``: its spawned multiprocessing child."""
    for pid in children(service_pid):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise LookupError(f"service {service_pid} has no data-plane process")


def children(pid: int) -> list[int]:
    """Pids of the live (non-zombie) processes whose parent is ``pid``."""
    return [child for child, fields in live_processes() if int(fields[1]) == pid]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSERVE_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_service(root: Path, log_path: Path, *, port: int = 0, extra_args: Sequence[str] = (),
                  timeout_seconds: float = 90.0) -> RunningService:
    """Start ``clipserve start`` and wait until it serves; raise with its log if it does not."""
    command = [sys.executable, "-m", "clipserve", "start", "--dataset", "k400", "--root", str(root),
               "--host", "127.0.0.1", "--port", str(port), "--no-progress", "--log-level", "info",
               *service_args(), *extra_args]
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                               env=_clean_env(), start_new_session=True)
    log_file.close()
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        match = READY_PATTERN.search(log_path.read_text(errors="replace"))
        if match:
            url = match.group(2).rstrip("/")
            service = RunningService(process, url, int(url.rsplit(":", 1)[1]), log_path)
            try:
                if service.get("/healthz").status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_service(process)
    raise RuntimeError(f"clipserve start did not become ready; log:\n{log_path.read_text(errors='replace')}")


@dataclass
class StopResult:
    status: int | None
    """Exit status after SIGTERM (None: it had to be killed)."""
    leftover_processes: bool
    """Whether anything of its process group (decode workers) was still alive after it exited."""
    leftover_commands: list[str]


def stop_service(process: subprocess.Popen[bytes], timeout_seconds: float = 30.0) -> StopResult:
    """SIGTERM, wait, then SIGKILL whatever is left of the process group (workers included)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            pass
    status = process.poll()
    leftovers = False
    commands: list[str] = []
    deadline = time.monotonic() + 15.0  # a multiprocessing forkserver exits just after its parent
    while True:
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            break
        if time.monotonic() > deadline:
            leftovers = True
            commands = _group_commands(process.pid)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            break
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
        process.wait(10)
    return StopResult(status, leftovers, commands)


def stop_and_check_clean(running: RunningService) -> None:
    """SIGTERM the service and check the clean shutdown: status 0, nothing of its process group left,
    no shared-memory segment of its data plane left."""
    plane = running.data_plane_pid
    stopped = stop_service(running.process)
    assert stopped.status == 0, running.log()[-3000:]
    assert not stopped.leftover_processes, stopped.leftover_commands
    assert not shm_entries(plane), "segments left after SIGTERM"

def live_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ...) of every
    process that is not a zombie (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            yield int(entry), fields


def _group_commands(pgid: int) -> list[str]:
    """Command lines of the live processes in process group ``pgid``."""
    out = []
    for pid, fields in live_processes():
        if int(fields[2]) == pgid:
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


@contextmanager
def running_service(root: Path, log_path: Path, *, port: int = 0,
                    extra_args: Sequence[str] = ()) -> Iterator[RunningService]:
    service = start_service(root, log_path, port=port, extra_args=extra_args)
    try:
        yield service
    finally:
        stop_service(service.process)


def start_consumer(url: str, out_path: Path, *, batches: int, rank: int = 0, world_size: int = 1,
                   transport: str = "shm", hold_after: int | None = None, delay_seconds: float = 0.0,
                   start_epoch: int = 0, start_step: int = 0) -> subprocess.Popen[bytes]:
    """Run this file as a consumer process (see the module docstring)."""
    command = [sys.executable, str(Path(__file__).resolve()), url, "--batches", str(batches), "--out",
               str(out_path), "--rank", str(rank), "--world-size", str(world_size), "--transport", transport,
               "--delay-seconds", str(delay_seconds), "--start-epoch", str(start_epoch),
               "--start-step", str(start_step)]
    if hold_after is not None:
        command += ["--hold-after", str(hold_after)]
    log = open(out_path.with_suffix(".log"), "wb")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=_clean_env())
    log.close()
    return process


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def batch_record(clips: np.ndarray, video_index: Any, is_padding: Any, clip_start_seconds: Any,
                 epoch: int, step: int) -> dict[str, Any]:
    """What the tests compare: positions, videos and a hash of the exact clip bytes."""
    clips = np.ascontiguousarray(np.asarray(clips))
    return {
        "epoch": int(epoch),
        "step": int(step),
        "video_index": [int(v) for v in np.asarray(video_index)],
        "is_padding": [bool(v) for v in np.asarray(is_padding)],
        "clip_start_seconds": [[round(float(s), 5) for s in row] for row in np.asarray(clip_start_seconds)],
        "clips_shape": list(clips.shape),
        "clips_sha256": hashlib.sha256(clips.tobytes()).hexdigest(),
    }


def wait_for(predicate: Any, timeout_seconds: float, what: str, interval_seconds: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_seconds)
    raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")


def shm_entries(pid: int | None = None) -> list[str]:
    """Names in /dev/shm that clipserve made (of process ``pid`` if given)."""
    uid = os.getuid()
    prefix = f"clipserve-{uid}-" + (f"{pid}-" if pid is not None else "")
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(prefix))


def _consume(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="test consumer: write one JSON line per batch")
    parser.add_argument("url")
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--transport", default="shm")
    parser.add_argument("--hold-after", type=int, default=None)
    parser.add_argument("--delay-seconds", type=float, default=0.0)
    parser.add_argument("--start-epoch", type=int, default=0)
    parser.add_argument("--start-step", type=int, default=0)
    args = parser.parse_args(argv)

    from clipserve.client import ClipStream

    stream = ClipStream(args.url, rank=args.rank, world_size=args.world_size, start_epoch=args.start_epoch,
                        start_step=args.start_step, transport=args.transport, timeout_seconds=60.0,
                        reconnect_timeout_seconds=60.0)
    with args.out.open("a") as out:
        for count, batch in enumerate(stream, start=1):
            record = batch_record(batch.clips.numpy(), batch.video_index, batch.is_padding,
                                  batch.clip_start_seconds, batch.epoch, batch.step)
            record["consumer_id"] = stream.consumer_id
            out.write(json.dumps(record) + "\n")
            out.flush()
            if args.hold_after is not None and count >= args.hold_after:
                print("holding", flush=True)
                while True:  # keep the slot; the test kills this process
                    time.sleep(1.0)
            if count >= args.batches:
                break
            if args.delay_seconds:
                time.sleep(args.delay_seconds)
    stream.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(_consume())
