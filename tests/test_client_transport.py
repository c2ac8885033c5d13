"""ClipStream against a tiny stand-in attach server running in another process.

The stand-in (``python tests/test_client_transport.py serve ...``) implements the attach protocol
the real service implements (``POST/DELETE /v1/consumers``, ``GET /v1/consumers/{id}/batches``)
on top of the real ``ConsumerChannel`` and HTTP frame codec, and feeds deterministic synthetic
batches (a pure function of seed, rank, epoch, step), so restarts can be checked for identical
batches without the FastAPI service or video decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from clipserve.batch import Batch, StreamPosition
from clipserve.errors import LayoutChangedError, RingFullError
from clipserve.transport import (
    FRAME_MEDIA_TYPE,
    BatchLayout,
    ConsumerChannel,
    cleanup_stale_segments,
    encode_batch_frame,
    new_instance_token,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 7
STEPS_PER_EPOCH = 3


def make_layout(height_pixels: int = 16) -> BatchLayout:
    return BatchLayout(batch_size=2, num_clips=2, frames_per_clip=2, height_pixels=height_pixels, width_pixels=16)


def synthetic_batch(layout: BatchLayout, rank: int, epoch: int, step: int) -> Batch:
    """Deterministic batch for (SEED, rank, epoch, step)."""
    rng = np.random.default_rng([SEED, rank, epoch, step])
    b, rho = layout.batch_size, layout.num_clips
    return Batch(
        clips=rng.integers(0, 256, layout.clips_shape, dtype=np.uint8),
        video_index=rng.integers(0, 1000, b, dtype=np.int64),
        label=rng.integers(0, 400, b, dtype=np.int64),
        clip_start_seconds=(rng.random((b, rho)) * 10).astype(np.float32),
        is_padding=np.array([False] * (b - 1) + [step == STEPS_PER_EPOCH - 1]),
        epoch=epoch,
        step=step,
    )


def positions(epoch: int, step: int):
    position = StreamPosition(epoch, step)
    while True:
        yield position.epoch, position.step
        position = position.next(STEPS_PER_EPOCH)


# ----- the stand-in attach server (runs in a subprocess) ------------------------------------------


def serve(port: int, height_pixels: int) -> None:
    layout = make_layout(height_pixels)
    token = new_instance_token()
    removed = cleanup_stale_segments()
    consumers: dict[str, dict] = {}
    lock = threading.Lock()

    def feed(channel: ConsumerChannel, rank: int, epoch: int, step: int) -> None:
        for e, s in positions(epoch, step):
            while True:
                try:
                    if not channel.put(synthetic_batch(layout, rank, e, s), timeout_seconds=0.5):
                        channel.close()
                        return
                    break
                except RingFullError:
                    continue

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                return self.reply(200, {"ok": True})
            match = re.fullmatch(r"/v1/consumers/(\w+)/(batches|debug)", self.path)
            consumer = consumers.get(match.group(1)) if match else None
            if consumer is None:
                return self.reply(404, {"detail": "unknown consumer"})
            if match.group(2) == "debug":
                channel = consumer.get("channel")
                return self.reply(200, {"published": channel.published_batches, "closed": channel.closed})
            self.send_response(200)
            self.send_header("Content-Type", FRAME_MEDIA_TYPE)
            self.end_headers()
            try:
                for e, s in positions(consumer["start_epoch"], consumer["start_step"]):
                    self.wfile.write(encode_batch_frame(synthetic_batch(layout, consumer["rank"], e, s), layout))
            except OSError:
                pass

        def do_POST(self) -> None:
            if self.path != "/v1/consumers":
                return self.reply(404, {"detail": "not found"})
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rank, world_size = request["rank"], request["world_size"]
            if not 0 <= rank < world_size:
                return self.reply(422, {"detail": "rank must be in [0, world_size)"})
            with lock:
                consumer_id = f"c{len(consumers)}"
                consumer = {"rank": rank, "start_epoch": request["start_epoch"], "start_step": request["start_step"]}
                consumers[consumer_id] = consumer
            response = {
                "consumer_id": consumer_id,
                "steps_per_epoch": STEPS_PER_EPOCH,
                "layout": layout.describe(),
                "layout_id": layout.layout_id,
                "rank": rank,
                "world_size": world_size,
            }
            if request["transport"] == "shm":
                channel = ConsumerChannel(layout, 3, token, consumer_id)
                consumer["channel"] = channel
                response.update(channel.attach_info())
                args = (channel, rank, request["start_epoch"], request["start_step"])
                threading.Thread(target=feed, args=args, daemon=True).start()
            self.reply(201, response)

        def do_DELETE(self) -> None:
            match = re.fullmatch(r"/v1/consumers/(\w+)", self.path)
            consumer = consumers.get(match.group(1)) if match else None
            if consumer is None:
                return self.reply(404, {"detail": "unknown consumer"})
            if "channel" in consumer:
                consumer["channel"].close(reason="detached")
            self.reply(200, {"detached": True})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(json.dumps({"ready": True, "removed": removed}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    for consumer in consumers.values():
        if "channel" in consumer:
            consumer["channel"].close(reason="service shutting down")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--height-pixels", type=int, default=16)
    arguments = parser.parse_args()
    serve(arguments.port, arguments.height_pixels)
    sys.exit(0)


# ----- tests (pytest process = the trainer side) --------------------------------------------------

import httpx  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clipserve.client import ClipStream, ClipStreamError  # noqa: E402
from clipserve.transport.ring import SHM_DIR  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandInService:
    """Starts/stops stand-in servers on one port; kills them all at teardown."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.removed: list[str] = []

    def start(self, height_pixels: int = 16) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        command = [sys.executable, __file__, "serve", "--port", str(self.port), "--height-pixels", str(height_pixels)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
        line = self.process.stdout.readline()
        assert line, f"stand-in server failed to start (rc={self.process.wait(timeout=10)})"
        self.removed = json.loads(line)["removed"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process = None

    def debug(self, consumer_id: str) -> dict:
        return httpx.get(f"{self.url}/v1/consumers/{consumer_id}/debug", timeout=5).json()


@pytest.fixture
def service():
    stand_in = StandInService()
    stand_in.start()
    yield stand_in
    stand_in.stop()


def assert_batch_equals(batch, layout: BatchLayout, rank: int, epoch: int, step: int) -> None:
    expected = synthetic_batch(layout, rank, epoch, step)
    assert (batch.epoch, batch.step) == (epoch, step)
    assert batch.clips.dtype == torch.uint8 and tuple(batch.clips.shape) == layout.clips_shape
    assert torch.equal(batch.clips, torch.from_numpy(expected.clips))
    assert torch.equal(batch.video_index, torch.from_numpy(expected.video_index))
    assert torch.equal(batch.label, torch.from_numpy(expected.label))
    assert torch.equal(batch.clip_start_seconds, torch.from_numpy(expected.clip_start_seconds))
    assert torch.equal(batch.is_padding, torch.from_numpy(expected.is_padding))


def mapped_range(segment_name: str) -> tuple[int, int]:
    """Address range at which this process maps /dev/shm/<segment_name> (from /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(SHM_DIR / segment_name)):
            start, end = line.split()[0].split("-")
            return int(start, 16), int(end, 16)
    raise AssertionError(f"{segment_name} is not mapped")


def test_shm_batches_are_zero_copy_views_in_stream_order(service):
    layout = make_layout()
    with ClipStream(service.url, timeout_seconds=20) as stream:
        for epoch, step in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
            batch = next(stream)
            assert_batch_equals(batch, layout, 0, epoch, step)
            start, end = mapped_range(stream._ring.segment.name)
            assert start <= batch.clips.data_ptr() and batch.clips.data_ptr() + layout.field("clips").size_bytes <= end
        assert stream.state_dict() == {
            "epoch": 1,
            "step": 2,
            "rank": 0,
            "world_size": 1,
            "layout_id": layout.layout_id,
        }
        segment = stream._ring.segment.name
    assert not (SHM_DIR / segment).exists(), "close() must detach (DELETE) so the service unlinks the ring"


def test_slot_is_released_when_the_next_batch_is_requested(service):
    with ClipStream(service.url, timeout_seconds=20) as stream:
        batches = [next(stream) for _ in range(4)]  # 3 released, the 4th held
        consumer_id = stream.consumer_id

        def published() -> int:
            return service.debug(consumer_id)["published"]

        deadline = time.monotonic() + 10
        while published() < 3 + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert published() == 3 + 3  # 3 slots: 1 held + 2 ahead; 3 released earlier
        batches[-1].release()
        deadline = time.monotonic() + 10
        while published() < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert published() == 7


def test_state_dict_resume_gives_identical_batches(service):
    layout = make_layout()
    with ClipStream(service.url, rank=1, world_size=2, timeout_seconds=20) as first:
        for _ in range(4):
            next(first)
        state = first.state_dict()
    assert (state["epoch"], state["step"]) == (1, 1)
    with ClipStream(service.url, rank=1, world_size=2, timeout_seconds=20) as second:
        second.load_state_dict(state)
        assert_batch_equals(next(second), layout, 1, 1, 1)
        assert_batch_equals(next(second), layout, 1, 1, 2)
        with pytest.raises(ValueError, match="rank"):
            second.load_state_dict({**state, "rank": 0})


def test_service_kill9_then_restart_resumes_identically_and_cleans_up(service):
    layout = make_layout()
    with ClipStream(service.url, timeout_seconds=20, reconnect_timeout_seconds=30) as stream:
        assert_batch_equals(next(stream), layout, 0, 0, 0)
        assert_batch_equals(next(stream), layout, 0, 0, 1)
        old_segment = stream._ring.segment.name
        service.stop(signal.SIGKILL)
        assert (SHM_DIR / old_segment).exists()  # a crash leaves the segment behind...
        restarter = threading.Timer(0.5, service.start)
        restarter.start()
        # Batches announced before the crash may still be read from our mapping (at most 3 slots);
        # then the client notices, retries the attach until the service is back, and continues.
        expected = positions(0, 2)
        for _ in range(4):
            assert_batch_equals(next(stream), layout, 0, *next(expected))
            if stream._ring.segment.name != old_segment:
                break
        restarter.join()
        assert stream._ring.segment.name != old_segment
        assert_batch_equals(next(stream), layout, 0, *next(expected))
        assert old_segment in service.removed  # ...and the next start removed the crashed one's segment
        assert not (SHM_DIR / old_segment).exists()


def test_layout_change_after_restart_raises(service):
    with ClipStream(service.url, timeout_seconds=20, reconnect_timeout_seconds=30) as stream:
        next(stream)
        service.stop(signal.SIGTERM)
        service.start(height_pixels=32)
        # Batches announced before the shutdown are still valid in our mapping and come first.
        with pytest.raises(LayoutChangedError, match="layout changed"):
            for _ in range(3):
                next(stream)


def test_http_transport_gives_the_same_batches(service):
    layout = make_layout()
    with ClipStream(service.url, start_epoch=2, start_step=1, transport="http", timeout_seconds=20) as stream:
        for epoch, step in [(2, 1), (2, 2), (3, 0)]:
            batch = next(stream)
            assert_batch_equals(batch, layout, 0, epoch, step)
            assert batch.clips.is_contiguous()


def test_unreachable_service_and_bad_arguments_give_clear_errors():
    stream = ClipStream(f"http://127.0.0.1:{free_port()}", timeout_seconds=2, reconnect_timeout_seconds=0.5)
    with pytest.raises(ClipStreamError, match="could not attach"):
        next(stream)
    stream.close()
    with pytest.raises(ValueError, match=r"rank \(2\) must be < world_size \(2\)"):
        ClipStream("http://127.0.0.1:1", rank=2, world_size=2)
    with pytest.raises(ValueError, match="transport"):
        ClipStream("http://127.0.0.1:1", transport="tcp")  # type: ignore[arg-type]


def test_resuming_with_a_state_of_another_layout_raises(service):
    stream = ClipStream(service.url, timeout_seconds=20)
    stream.load_state_dict({"epoch": 0, "step": 1, "rank": 0, "world_size": 1, "layout_id": "0123456789abcdef"})
    with pytest.raises(LayoutChangedError, match="0123456789abcdef"):
        next(stream)
    stream.close()
