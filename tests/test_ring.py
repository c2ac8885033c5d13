"""Shared-memory ring, consumer channel and HTTP frame codec, with real /dev/shm and real processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipserve.batch import Batch
from clipserve.errors import RingError, RingFullError
from clipserve.transport import (
    BatchLayout,
    ConsumerChannel,
    FrameFormatError,
    RingConsumer,
    SharedSegment,
    cleanup_stale_segments,
    encode_batch_frame,
    iter_decode_frames,
    new_instance_token,
    segment_name,
)
from clipserve.transport.ring import SHM_DIR

LAYOUT = BatchLayout(batch_size=2, num_clips=2, frames_per_clip=2, height_pixels=16, width_pixels=16)
REPO_ROOT = Path(__file__).resolve().parents[1]


def make_batch(epoch: int, step: int, layout: BatchLayout = LAYOUT) -> Batch:
    rng = np.random.default_rng([epoch, step])
    b, rho = layout.batch_size, layout.num_clips
    return Batch(
        clips=rng.integers(0, 256, layout.clips_shape, dtype=np.uint8),
        video_index=np.arange(b, dtype=np.int64) + 100 * step,
        label=rng.integers(0, 400, b, dtype=np.int64),
        clip_start_seconds=rng.random((b, rho), dtype=np.float32) * 10,
        is_padding=np.arange(b) >= b - (step % 2),
        epoch=epoch,
        step=step,
    )


# A consumer in another process: reads batches through RingConsumer and reports them as JSON lines.
CONSUMER_SCRIPT = r"""
import json, sys, time, zlib
from clipserve.transport import RingConsumer
info, mode, count, delay = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
consumer = RingConsumer(info)
print(json.dumps({"event": "connected"}), flush=True)
for _ in range(count):
    message = consumer.next_slot(timeout_seconds=20)
    arrays = consumer.arrays(message.slot)
    report = {"event": "batch", "slot": message.slot, "epoch": message.epoch, "step": message.step,
              "clips_crc": zlib.crc32(arrays["clips"].tobytes()),
              "video_index": arrays["video_index"].tolist(), "is_padding": arrays["is_padding"].tolist()}
    print(json.dumps(report), flush=True)
    if mode == "hold":
        time.sleep(120)   # killed by the test while holding the slot
    time.sleep(delay)
    consumer.release(message.slot)
if mode == "linger":
    time.sleep(120)   # stay connected after releasing; the test kills it
consumer.close()
print(json.dumps({"event": "done"}), flush=True)
"""


def start_consumer(info: dict, mode: str = "read", count: int = 1, delay_seconds: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CONSUMER_SCRIPT, json.dumps(info), mode, str(count), str(delay_seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )


def stop(process: subprocess.Popen) -> None:
    """Kill (if still running), reap and close the pipe of a consumer process."""
    process.kill()
    process.wait()
    process.stdout.close()


def read_event(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    assert line, f"consumer exited early (rc={process.wait(timeout=10)})"
    return json.loads(line)


def wait_until(predicate, timeout_seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def channel():
    token = new_instance_token()
    channel = ConsumerChannel(LAYOUT, 3, token, "c0")
    yield channel
    channel.close()
    assert not (SHM_DIR / channel.attach_info()["segment_name"]).exists()


# ----- layout -------------------------------------------------------------------------------------


def test_layout_offsets_are_aligned_and_disjoint():
    layout = BatchLayout(batch_size=8, num_clips=2, frames_per_clip=8, height_pixels=224, width_pixels=224)
    fields = layout.fields
    assert [f.name for f in fields] == ["clips", "video_index", "label", "clip_start_seconds", "is_padding"]
    assert fields[0].shape == (8, 2, 3, 8, 224, 224) and fields[0].size_bytes == 8 * 2 * 3 * 8 * 224 * 224
    for previous, current in zip(fields, fields[1:]):
        assert current.offset_bytes % 64 == 0
        assert current.offset_bytes >= previous.offset_bytes + previous.size_bytes
    assert layout.slot_size_bytes % 64 == 0
    assert layout.slot_size_bytes >= fields[-1].offset_bytes + fields[-1].size_bytes


def test_layout_id_is_stable_and_tracks_shapes():
    same = BatchLayout(**LAYOUT.model_dump())
    assert same.layout_id == LAYOUT.layout_id and len(LAYOUT.layout_id) == 16
    other = BatchLayout(**{**LAYOUT.model_dump(), "height_pixels": 32})
    assert other.layout_id != LAYOUT.layout_id
    assert BatchLayout.from_description(json.loads(json.dumps(LAYOUT.describe()))) == LAYOUT
    with pytest.raises(ValueError, match="layout_id"):
        BatchLayout.from_description({**LAYOUT.describe(), "layout_id": "0" * 16})
    with pytest.raises(ValueError, match="batch_size"):
        BatchLayout(batch_size=0, num_clips=2, frames_per_clip=2, height_pixels=16, width_pixels=16)


# ----- segments and names -------------------------------------------------------------------------


def test_segment_and_socket_are_owner_only(channel):
    info = channel.attach_info()
    assert info["segment_name"] == segment_name(info["segment_name"].split("-")[3], "c0")
    assert info["segment_name"].startswith(f"clipserve-{os.getuid()}-{os.getpid()}-")
    segment_stat = os.stat(SHM_DIR / info["segment_name"])
    assert stat.S_IMODE(segment_stat.st_mode) == 0o600
    assert segment_stat.st_size == 3 * LAYOUT.slot_size_bytes
    socket_dir = Path(info["socket_path"]).parent
    assert stat.S_IMODE(os.stat(socket_dir).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(info["socket_path"]).st_mode)


def test_not_enough_shared_memory_names_size_and_flags():
    name = segment_name(new_instance_token(), "huge")
    with pytest.raises(RingError, match=r"needs 4398046511104 bytes.*--prefetch-batches.*--batch-size"):
        SharedSegment.create(name, 1 << 42)
    assert not (SHM_DIR / name).exists()


def test_bad_consumer_id_is_rejected():
    with pytest.raises(ValueError, match=r"consumer_id \('../x'\)"):
        ConsumerChannel(LAYOUT, 2, new_instance_token(), "../x")


def test_cleanup_removes_only_dead_instances():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    uid = os.getuid()
    dead_segment = SHM_DIR / f"clipserve-{uid}-{dead.pid}-deadbeef-c0"
    dead_socket_dir = SHM_DIR / f"clipserve-{uid}-{dead.pid}-deadbeef-c0-sock-abc"
    live_segment = SHM_DIR / f"clipserve-{uid}-{os.getpid()}-cafef00d-c0"
    foreign = SHM_DIR / f"notclipserve-{uid}-{dead.pid}-x"
    try:
        for path in (dead_segment, live_segment, foreign):
            path.write_bytes(b"x")
        dead_socket_dir.mkdir(mode=0o700)
        (dead_socket_dir / "ring.sock").write_bytes(b"")
        removed = cleanup_stale_segments()
        assert dead_segment.name in removed and dead_socket_dir.name in removed
        assert not dead_segment.exists() and not dead_socket_dir.exists()
        assert live_segment.exists() and foreign.exists()
        # a freshly started service whose pid was reused (containers): its own pid's entries are stale
        assert live_segment.name in cleanup_stale_segments(this_process_is_new=True)
        assert not live_segment.exists() and foreign.exists()
    finally:
        for path in (dead_segment, live_segment, foreign):
            path.unlink(missing_ok=True)



def test_cleanup_treats_a_zombie_creator_as_dead():
    """A service killed with everything it started stays a zombie until someone reaps it (a
    container's pid 1 may never do so); its segments are stale all the same."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    segment = SHM_DIR / f"clipserve-{os.getuid()}-{zombie.pid}-deadbeef-c0"
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[1][:1] != "Z":  # exited, not reaped
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.02)
        segment.write_bytes(b"x")
        assert segment.name in cleanup_stale_segments()
        assert not segment.exists()
    finally:
        segment.unlink(missing_ok=True)
        zombie.wait(timeout=30)

# ----- channel with consumers in other processes --------------------------------------------------


def test_consumer_process_receives_exact_batches_in_order(channel):
    import zlib

    consumer = start_consumer(channel.attach_info(), count=6)
    try:
        for step in range(6):
            assert channel.put(make_batch(0, step), timeout_seconds=20)
            assert channel.occupancy()[0] <= 3
        assert read_event(consumer)["event"] == "connected"
        for step in range(6):
            event = read_event(consumer)
            expected = make_batch(0, step)
            assert (event["epoch"], event["step"]) == (0, step)
            assert event["clips_crc"] == zlib.crc32(expected.clips.tobytes())
            assert event["video_index"] == expected.video_index.tolist()
            assert event["is_padding"] == expected.is_padding.tolist()
        assert read_event(consumer)["event"] == "done"
        assert consumer.wait(timeout=20) == 0
    finally:
        stop(consumer)
    assert wait_until(lambda: channel.disconnected)
    assert channel.occupancy() == (0, 3)


def test_producer_blocks_when_all_slots_taken(channel):
    for step in range(3):
        assert channel.put(make_batch(0, step), timeout_seconds=1)
    assert channel.occupancy() == (3, 3)
    started = time.monotonic()
    with pytest.raises(RingFullError, match="all 3 slots taken"):
        channel.put(make_batch(0, 3), timeout_seconds=0.3)
    assert time.monotonic() - started >= 0.3
    # A consumer that releases one slot (and stays connected) unblocks exactly one more put.
    consumer = start_consumer(channel.attach_info(), mode="linger", count=1)
    try:
        assert channel.put(make_batch(0, 3), timeout_seconds=20)
        assert channel.occupancy() == (3, 3) and not channel.disconnected
        with pytest.raises(RingFullError):
            channel.put(make_batch(0, 4), timeout_seconds=0.3)
    finally:
        stop(consumer)


def test_kill9_consumer_mid_batch_returns_all_slots(channel):
    for step in range(3):
        channel.put(make_batch(0, step), timeout_seconds=1)
    consumer = start_consumer(channel.attach_info(), mode="hold", count=1)
    try:
        assert read_event(consumer)["event"] == "connected"
        assert read_event(consumer)["event"] == "batch"  # holding slot 0 now
        assert channel.wait_connected(5)
        assert channel.occupancy() == (3, 3) and not channel.disconnected
        os.kill(consumer.pid, signal.SIGKILL)
        consumer.wait(timeout=10)
    finally:
        stop(consumer)
    assert wait_until(lambda: channel.disconnected)
    assert channel.occupancy() == (0, 3)
    assert channel.put(make_batch(0, 3), timeout_seconds=1) is False


def test_close_wakes_a_blocked_put(channel):
    for step in range(3):
        channel.put(make_batch(0, step), timeout_seconds=1)
    results = []
    producer = threading.Thread(target=lambda: results.append(channel.put(make_batch(0, 3), timeout_seconds=None)))
    producer.start()
    time.sleep(0.2)
    channel.close()
    producer.join(timeout=5)
    assert results == [False]


VIEW_AFTER_CLOSE_SCRIPT = r"""
import json, sys, zlib
from clipserve.transport import RingConsumer
consumer = RingConsumer(json.loads(sys.argv[1]))
message = consumer.next_slot(timeout_seconds=20)
clips = consumer.tensors(message.slot)["clips"]
numpy_clips = consumer.arrays(message.slot)["clips"]
consumer.close()   # must not unmap memory that these views still use
print(json.dumps({"crc": zlib.crc32(clips.numpy().tobytes()), "numpy_crc": zlib.crc32(numpy_clips.tobytes())}))
"""


def test_views_stay_valid_after_the_consumer_closes(channel):
    import zlib

    channel.put(make_batch(0, 0), timeout_seconds=1)
    result = subprocess.run(
        [sys.executable, "-c", VIEW_AFTER_CLOSE_SCRIPT, json.dumps(channel.attach_info())],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = zlib.crc32(make_batch(0, 0).clips.tobytes())
    assert json.loads(result.stdout) == {"crc": expected, "numpy_crc": expected}


def test_wrong_token_is_refused_and_right_one_still_connects(channel):
    info = channel.attach_info()
    with pytest.raises(RingError, match="handshake"):
        RingConsumer({**info, "connect_token": "0" * 32}, connect_timeout_seconds=5)
    assert not channel.connected
    channel.put(make_batch(0, 0), timeout_seconds=1)
    with RingConsumer(info) as consumer:
        message = consumer.next_slot(timeout_seconds=5)
        assert (message.epoch, message.step) == (0, 0)
        np.testing.assert_array_equal(consumer.arrays(message.slot)["clips"], make_batch(0, 0).clips)


def test_put_rejects_batches_that_do_not_match_the_layout(channel):
    batch = make_batch(0, 0)
    batch.clips = batch.clips[:, :1]
    with pytest.raises(ValueError, match=r"batch.clips has shape \(2, 1, 3, 2, 16, 16\)"):
        channel.put(batch, timeout_seconds=1)
    batch = make_batch(0, 0)
    batch.clips = batch.clips.astype(np.float32)
    with pytest.raises(ValueError, match="batch.clips has dtype float32"):
        channel.put(batch, timeout_seconds=1)
    batch = make_batch(0, 0)
    batch.step = -1
    with pytest.raises(ValueError, match="batch.step"):
        channel.put(batch, timeout_seconds=1)
    assert channel.occupancy() == (0, 3)


# ----- HTTP frames --------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=8), st.integers(0, 3))
def test_frames_round_trip_in_any_chunking(chunk_sizes, num_frames):
    batches = [make_batch(1, step) for step in range(num_frames)]
    stream = b"".join(encode_batch_frame(batch, LAYOUT) for batch in batches)
    chunks, position, index = [], 0, 0
    while position < len(stream):
        size = chunk_sizes[index % len(chunk_sizes)]
        chunks.append(stream[position : position + size])
        position, index = position + size, index + 1
    frames = list(iter_decode_frames(chunks))
    assert [(f.epoch, f.step) for f in frames] == [(1, s) for s in range(num_frames)]
    for frame, batch in zip(frames, batches):
        assert frame.layout_id == LAYOUT.layout_id
        for name in ("clips", "video_index", "label", "clip_start_seconds", "is_padding"):
            np.testing.assert_array_equal(frame.arrays[name], getattr(batch, name))
            assert frame.arrays[name].dtype == getattr(batch, name).dtype


def test_frame_stream_errors_are_clear():
    frame = encode_batch_frame(make_batch(0, 0), LAYOUT)
    with pytest.raises(FrameFormatError, match="stream ended inside a frame"):
        list(iter_decode_frames([frame[:-1]]))
    with pytest.raises(FrameFormatError, match="bad frame magic"):
        list(iter_decode_frames([b"XXXX" + frame[4:]]))
    corrupt = frame[:12] + b"\xff" * 16 + frame[28:]
    with pytest.raises(FrameFormatError):
        list(iter_decode_frames([corrupt]))
    other = BatchLayout(**{**LAYOUT.model_dump(), "batch_size": 3})
    with pytest.raises(ValueError, match="batch.clips has shape"):
        encode_batch_frame(make_batch(0, 0), other)
