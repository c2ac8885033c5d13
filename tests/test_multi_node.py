"""Several nodes and several decode hosts, on one machine: real services, real torchrun, gloo.

- **per-node layout**: 2 simulated nodes (``torchrun --nnodes 2 --node-rank n``, c10d rendezvous on
  127.0.0.1, 2 ranks each), node n's ranks on its own ``clipserve start --shard-id n --num-shards
  2``. Every video is trained on exactly once per epoch across the 4 ranks, the DDP weights agree,
  and killing node 1's service mid-run and restarting it resumes its ranks at the same step with the
  same batches (compared with a fresh read of the pure-function stream).
- **global layout**: 2 simulated nodes of 1 rank over HTTP on one service (``--num-shards 1``).
- **refusals**: a service's shard that would leave videos unread stops the trainer at attach time.
- **several decode hosts**: ``MultiClipStream`` over the two shard services interleaves them in a
  fixed order (whatever the URL order), resumes exactly from ``state_dict``, waits for a killed
  service and resumes it exactly, and fails with a clear error when it stays away.

The bug this guards against: ranks attaching with the job's global rank to per-node services read
2 of each node's 4 parts, so half of every epoch went unread without an error.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipserve.client import ClipStream, ClipStreamError, ServiceURLError
from clipserve.client_multi import MultiClipStream, fetch_service_shard
from clipserve.plan import epoch_order
from tests.service_helpers import (
    REPO_ROOT,
    RunningService,
    batch_record,
    read_records,
    shm_entries,
    start_service,
    stop_service,
    wait_for,
)
from trainer.config import ConfigError
from trainer.layout import LaunchEnv, resolve_layout

NUM_VIDEOS = 8  # training videos of the dataset below
SEED = 7  # SERVICE_SETTINGS' seed
#: B = 1 so each of the 4 consumers (2 shards × 2 ranks) has 2 steps per epoch.
SHARD_ARGS = ["--batch-size", "1", "--prefetch-batches", "1"]
TRAINER_FLAGS = ["--objective", "moco", "--profile", "cpu", "--backbone", "tiny", "--progress", "false",
                 "--mlp-hidden-dim", "16", "--output-dim", "8", "--moco-queue-size", "8", "--device", "cpu",
                 "--record-videos", "--log-every-steps", "1"]
MAX_STEPS = 6  # 3 epochs of 2 steps
#: The shard services require a token, as services on other hosts must: the trainer sends
#: CLIPSERVE_TOKEN to every service (``/v1/info`` and the batch streams alike).
TOKEN = "multinode-test-token"
PROCESS_TIMEOUT_SECONDS = 240.0


class Shards:
    """The two shard services (``--shard-id k --num-shards 2``); ``restart(k)`` brings one back on its port."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.root, self.logs = root, logs
        self.services: list[RunningService] = []
        for shard_id in range(2):
            self.services.append(self._start(shard_id, port=0))

    def _start(self, shard_id: int, port: int, serve_shard: int | None = None) -> RunningService:
        served = shard_id if serve_shard is None else serve_shard
        args = [*SHARD_ARGS, "--shard-id", str(served), "--num-shards", "2", "--token", TOKEN]
        return start_service(self.root, self.logs / f"shard{shard_id}.log", port=port, extra_args=args)

    def url(self, shard_id: int) -> str:
        return self.services[shard_id].url

    def kill(self, shard_id: int) -> None:
        """SIGKILL the service's whole process group (a crash), and remove the segments it left."""
        service = self.services[shard_id]
        plane = service.data_plane_pid
        os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait(10)
        for name in shm_entries(plane):
            path = Path("/dev/shm", name)
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def restart(self, shard_id: int, serve_shard: int | None = None) -> None:
        """Start service ``shard_id`` again on its port (serving ``serve_shard`` if given: a wrong restart)."""
        self.services[shard_id] = self._start(shard_id, port=self.services[shard_id].port, serve_shard=serve_shard)

    def close(self) -> None:
        for service in self.services:
            stop_service(service.process)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes × 5 videos (4 train + 1 val each), ≤ 1.5 s, frames at a quarter of the sample size."""
    from clipserve.sample import build_sample, make_sample_spec

    root = tmp_path_factory.mktemp("multinode-data")
    spec = make_sample_spec(num_classes=2, videos_per_class=5, max_duration_seconds=1.5, frame_scale=0.25, seed=3)
    build_sample(root, spec, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def shards(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shards]:
    running = Shards(dataset_root, tmp_path_factory.mktemp("multinode-logs"))
    try:
        yield running
    finally:
        running.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSERVE_")}
    env["CLIPSERVE_TOKEN"] = TOKEN
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _torchrun_node(node_rank: int, rdzv_port: int, nproc: int, server: str, out: Path, *extra: str
                   ) -> subprocess.Popen[bytes]:
    """One simulated node: torchrun's agent and its ``nproc`` trainer ranks (c10d rendezvous on loopback)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
               "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{rdzv_port}",
               "--rdzv-id", f"job{rdzv_port}", "-m", "trainer", "--server", server, "--max-steps", str(MAX_STEPS),
               "--checkpoint-dir", str(out), *TRAINER_FLAGS, *extra]
    log = open(out.parent / f"{out.name}-node{node_rank}.log", "wb")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=_env(),
                               start_new_session=True)
    log.close()
    return process


def _finish(processes: list[subprocess.Popen[bytes]], out: Path) -> None:
    deadline = time.monotonic() + PROCESS_TIMEOUT_SECONDS
    try:
        for process in processes:
            process.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    logs = "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(out.parent.glob(f"{out.name}-node*.log")))
    assert all(process.returncode == 0 for process in processes), logs


def _rank_records(out: Path, world_size: int) -> dict[int, tuple[list[dict], dict]]:
    """rank → (its batch records, its final weights record) from ``--record-videos``."""
    result = {}
    for rank in range(world_size):
        records = read_records(out / f"videos-rank{rank}.jsonl")
        result[rank] = ([r for r in records if "video_index" in r], next(r for r in records if "final_step" in r))
    return result


def _check_every_video_once_per_epoch(records: dict[int, tuple[list[dict], dict]], epochs: int) -> None:
    for epoch in range(epochs):
        seen = sorted(v for batches, _ in records.values() for r in batches if r["epoch"] == epoch
                      for v, pad in zip(r["video_index"], r["is_padding"]) if not pad)
        assert seen == list(range(NUM_VIDEOS)), f"epoch {epoch}: videos trained on {seen}"


def _check_weights_agree(records: dict[int, tuple[list[dict], dict]]) -> None:
    finals = {rank: final for rank, (_, final) in records.items()}
    assert {final["final_step"] for final in finals.values()} == {MAX_STEPS}
    assert len({final["weights_sha256"] for final in finals.values()}) == 1, finals


def _slot_of(batches: list[dict], num_shards: int, world_size: int) -> tuple[int, int]:
    """(shard, consumer rank) whose pure-function order these batches follow."""
    order = [r["video_index"][0] for r in batches[:2]]
    for shard_id in range(num_shards):
        for rank in range(world_size):
            if epoch_order(NUM_VIDEOS, 0, SEED, shard_id=shard_id, num_shards=num_shards, rank=rank,
                           world_size=world_size)[:2] == order:
                return shard_id, rank
    raise AssertionError(f"batches {order} follow no consumer's order")


def _fresh_hashes(url: str, rank: int, world_size: int, count: int, transport: str = "shm") -> list[tuple]:
    with ClipStream(url, rank=rank, world_size=world_size, transport=transport, timeout_seconds=60.0,
                    reconnect_timeout_seconds=30.0, token=TOKEN) as stream:
        out = []
        for batch in stream:
            out.append((batch.epoch, batch.step, batch_record(batch.clips.numpy(), batch.video_index, batch.is_padding,
                                                              batch.clip_start_seconds, 0, 0)["clips_sha256"]))
            if len(out) == count:
                return out
    raise AssertionError("stream ended")


def test_global_ranks_on_per_node_services_would_read_half_the_epoch() -> None:
    """The bug of issue 21, in the plan's own terms: 2 nodes' services (shards 0, 1 of 2) and 4 ranks
    attaching with global ranks read 4 of 8 videos; with local ranks they read all 8."""
    global_ranks = {v for rank in range(4) for v in epoch_order(
        NUM_VIDEOS, 0, SEED, shard_id=rank // 2, num_shards=2, rank=rank, world_size=4)}
    local_ranks = [v for rank in range(4) for v in epoch_order(
        NUM_VIDEOS, 0, SEED, shard_id=rank // 2, num_shards=2, rank=rank % 2, world_size=2)]
    assert len(global_ranks) == NUM_VIDEOS // 2
    assert sorted(local_ranks) == list(range(NUM_VIDEOS))


def test_per_node_layout_two_nodes_every_video_once_and_a_service_restart_is_exact(
        shards: Shards, tmp_path: Path) -> None:
    out = tmp_path / "per-node"
    port = _free_port()
    nodes = [_torchrun_node(n, port, 2, shards.url(n), out, "--service-layout", "per-node") for n in range(2)]
    try:
        # kill node 1's service once a rank has trained 2 steps (of 6), then bring it back on its port
        def steps_done() -> int:  # complete lines only (a rank may be writing one)
            return max((path.read_text().count('"video_index"') for path in out.glob("videos-rank*.jsonl")), default=0)

        wait_for(lambda: steps_done() >= 2 or any(p.poll() is not None for p in nodes), PROCESS_TIMEOUT_SECONDS,
                 "2 trained steps", interval_seconds=0.02)
        steps_at_kill = steps_done()
        shards.kill(1)
        time.sleep(1.0)  # node 1's ranks find it gone
        shards.restart(1)
    finally:
        _finish(nodes, out)
    print(f"killed node 1's service after {steps_at_kill} of {MAX_STEPS} steps")
    assert 2 <= steps_at_kill < MAX_STEPS, f"the kill came after {steps_at_kill} steps, not mid-run"
    after_restart = shards.services[1].log().split("serving")[-1]  # the log is appended to by the restart
    assert after_restart.count("attached") == 2, "node 1's 2 ranks did not re-attach to the restarted service"

    records = _rank_records(out, 4)
    for rank, (batches, _) in records.items():
        assert [r["step"] for r in batches] == list(range(1, MAX_STEPS + 1)), f"rank {rank} skipped or repeated steps"
        assert [(r["epoch"], r["stream_step"]) for r in batches] == [(e, s) for e in range(3) for s in range(2)]
    _check_every_video_once_per_epoch(records, epochs=3)
    _check_weights_agree(records)
    # identical batches, before and after the restart: each rank's clips are its consumer's pure-function stream
    slots = {rank: _slot_of(batches, num_shards=2, world_size=2) for rank, (batches, _) in records.items()}
    assert sorted(slots.values()) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for rank, (shard_id, consumer) in slots.items():
        trained = [(r["epoch"], r["stream_step"], r["clips_sha256"]) for r in records[rank][0]]
        assert trained == _fresh_hashes(shards.url(shard_id), consumer, 2, MAX_STEPS), f"rank {rank}"


def test_global_layout_two_nodes_over_http_on_one_service(dataset_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "global"
    service = start_service(dataset_root, tmp_path / "one.log", extra_args=[*SHARD_ARGS, "--batch-size", "2"])
    try:
        port = _free_port()
        nodes = [_torchrun_node(n, port, 1, service.url, out, "--transport", "http") for n in range(2)]
        _finish(nodes, out)
        records = _rank_records(out, 2)
        assert "global layout: consumer" in (tmp_path / "global-node0.log").read_text() + \
            (tmp_path / "global-node1.log").read_text()
        # B = 2, 2 consumers of 8 videos: 2 steps per epoch, 3 epochs
        _check_every_video_once_per_epoch(records, epochs=3)
        _check_weights_agree(records)
    finally:
        stop_service(service.process)


def _refusal(server: str, *extra: str) -> str:
    process = subprocess.run([sys.executable, "-m", "trainer", "--server", server, "--max-steps", "1",
                              *TRAINER_FLAGS, *extra], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 2, process.stderr[-3000:]
    return process.stderr


def test_a_layout_that_leaves_videos_unread_is_refused(shards: Shards, tmp_path: Path) -> None:
    # one process on the service of shard 1 of 2: half of the epoch would never be read
    message = _refusal(shards.url(1), "--checkpoint-dir", str(tmp_path / "x"))
    assert re.search(r"error: .*serves shard 1 of 2, but this job has 1 node\(s\).*--num-shards 1, or pass all 2 "
                     r"services' URLs to --server", message), message
    # the same checks, from the services' own /v1/info, for a node of a 2-node job
    with pytest.raises(ServiceURLError, match=re.escape("service URL 'localhost:8000' has no scheme")):  # at once
        fetch_service_shard("localhost:8000", wait_seconds=120)
    with pytest.raises(ClipStreamError, match=r"/v1/info answered 401: .*missing or wrong token"):
        fetch_service_shard(shards.url(0), token="", wait_seconds=30)
    infos = [fetch_service_shard(shards.url(k), token=TOKEN, wait_seconds=30) for k in range(2)]
    node1 = LaunchEnv.from_environ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                                    "GROUP_RANK": "1"})
    assert resolve_layout("auto", [infos[1]], node1).rank == 0  # per-node, consumer LOCAL_RANK of 2
    with pytest.raises(ConfigError, match=r"serves shard 0 of 2, but this is node 1 \(GROUP_RANK\)"):
        resolve_layout("per-node", [infos[0]], node1)
    with pytest.raises(ConfigError, match=r"shard\(s\) \[1\] would never be read"):  # both nodes on shard 0
        resolve_layout("per-node", [infos[0]], node1, node_shards={0: [0, 0], 1: [0, 0]})
    assert resolve_layout("global", infos[::-1], node1).urls == (shards.url(0), shards.url(1))
    with pytest.raises(ConfigError, match=re.escape("1 shard(s) would never be read: start it with --num-shards 1, "
                                                    "or pass all 2 servers' URLs")):
        resolve_layout("global", [infos[1]], LaunchEnv.from_environ({}))


# ----- several decode hosts: MultiClipStream ------------------------------------------------------


def _multi_hashes(stream: MultiClipStream, count: int) -> list[tuple]:
    out = []
    for batch in stream:
        out.append((batch.epoch, batch.step, batch_record(batch.clips.numpy(), batch.video_index, batch.is_padding,
                                                          batch.clip_start_seconds, 0, 0)["clips_sha256"]))
        if len(out) == count:
            break
    return out


def test_several_servers_interleave_deterministically_and_resume_exactly(shards: Shards) -> None:
    urls = [shards.url(0), shards.url(1)]
    # world size 1: each shard gives 4 batches (B = 1) per epoch, the combined epoch 8
    expected_parts = [_fresh_hashes(url, 0, 1, 6, transport="http") for url in urls]
    expected = [(epoch, 2 * step + k, expected_parts[k][i][2])
                for i, (epoch, step, _) in enumerate(expected_parts[0]) for k in range(2)][:10]
    # the URL order does not matter
    with MultiClipStream(urls[::-1], transport="http", timeout_seconds=60, token=TOKEN) as stream:
        assert [shard.shard_id for shard in stream.shards] == [0, 1] and stream.steps_per_epoch == 8
        got = _multi_hashes(stream, 7)
        state = stream.state_dict()
    assert got == expected[:7]
    assert state["epoch"] == 0 and state["step"] == 7
    with MultiClipStream(urls, transport="http", timeout_seconds=60, token=TOKEN) as resumed:
        resumed.load_state_dict(state)
        assert _multi_hashes(resumed, 3) == expected[7:10]  # crosses into epoch 1
    with MultiClipStream(urls, rank=1, world_size=2, start_epoch=0, start_step=3, transport="http",
                         token=TOKEN) as other:
        # rank 1 of 2: 2 batches per shard and epoch; combined step 3 is shard 1's step 1
        batch = next(other)
        assert (batch.epoch, batch.step) == (0, 3)
        assert batch.video_index.tolist() == epoch_order(NUM_VIDEOS, 0, SEED, shard_id=1, num_shards=2, rank=1,
                                                         world_size=2)[1:2]


def test_several_servers_wait_for_a_dead_one_then_fail_clearly(shards: Shards) -> None:
    urls = [shards.url(0), shards.url(1)]
    with MultiClipStream(urls, transport="http", timeout_seconds=60, token=TOKEN) as straight:
        reference = _multi_hashes(straight, 6)
    with MultiClipStream(urls, transport="http", timeout_seconds=60, reconnect_timeout_seconds=60,
                         token=TOKEN) as stream:
        got = _multi_hashes(stream, 2)
        shards.kill(0)  # shard 0 serves combined steps 2, 4, ...
        restarter = threading.Thread(target=lambda: (time.sleep(2.0), shards.restart(0)))
        restarter.start()
        try:
            got += _multi_hashes(stream, 4)  # waits for shard 0, resumes it exactly
        finally:
            restarter.join()
    assert got == reference
    with MultiClipStream(urls, transport="http", timeout_seconds=30, reconnect_timeout_seconds=3,
                         token=TOKEN) as stream:
        _multi_hashes(stream, 1)
        shards.kill(1)
        try:
            with pytest.raises(ClipStreamError, match=re.escape(f"shard 1 of 2 ({shards.url(1)}) is gone")):
                _multi_hashes(stream, 4)
        finally:
            shards.restart(1)


def test_several_servers_refuse_a_service_that_comes_back_with_another_shard(shards: Shards) -> None:
    urls = [shards.url(0), shards.url(1)]
    with MultiClipStream(urls, transport="http", timeout_seconds=60, reconnect_timeout_seconds=60,
                         token=TOKEN) as stream:
        _multi_hashes(stream, 1)
        shards.kill(0)
        shards.restart(0, serve_shard=1)  # an operator's mistake: shard 0's host now serves shard 1 too
        try:
            with pytest.raises(ClipStreamError, match=re.escape(f"{shards.url(0)} came back with other settings "
                                                                "(shard_id 0 -> 1)")):
                _multi_hashes(stream, 2)
        finally:
            shards.kill(0)
            shards.restart(0)
