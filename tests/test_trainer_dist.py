"""Distributed paths on 2 CPU ranks over gloo (loopback): gathered SimCLR loss, distributed Sinkhorn and
SwAV, all-reduce BatchNorm and MoCo's shuffle-BN equal their single-process counterparts on the
concatenated batch; and the CLI runs unchanged under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainer.checkpoint import load_checkpoint
from trainer.dist import AllReduceBatchNorm
from trainer.backbones import TinyVideoCNN  # imported here so the forked ranks inherit it
from trainer.objectives import MoCo, NTXentLoss, SwaVLoss, sinkhorn

WORLD, B, RHO, K, D = 2, 3, 3, 5, 8
REPO = Path(__file__).resolve().parents[1]


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "z": torch.randn(RHO, WORLD * B, D, generator=g, dtype=torch.float64),  # (ρ, W·B, D)
        "scores": torch.nn.functional.normalize(torch.randn(RHO, WORLD * B, K, generator=g, dtype=torch.float64), dim=2),
        "bn_x": torch.randn(WORLD * B, 4, 2, 3, 3, generator=g, dtype=torch.float64),  # (N, C, T, H, W)
        "bn_w": torch.randn(WORLD * B, 4, 2, 3, 3, generator=g, dtype=torch.float64),
        "clips": torch.randn(WORLD * B, 3, 2, 16, 16, generator=g),  # (N, C, T, H, W)
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        inp, mine = _inputs(), slice(rank * B, (rank + 1) * B)
        out: dict[str, torch.Tensor] = {}
        z = inp["z"][:, mine].clone().requires_grad_(True)
        loss = NTXentLoss(0.1)(z)
        loss.backward()
        out["simclr_loss"], out["simclr_grad"] = loss.detach(), z.grad
        out["sinkhorn"] = sinkhorn(inp["scores"][0, mine], 0.05, 3, distributed=True)
        out["swav_loss"] = SwaVLoss(distributed=True)(inp["scores"][:, mine]).detach()
        bn = AllReduceBatchNorm(4).double()
        x = inp["bn_x"][mine].clone().requires_grad_(True)
        y = bn(x)
        (y * inp["bn_w"][mine]).sum().backward()
        out["bn_y"], out["bn_grad"], out["bn_mean"], out["bn_var"] = y.detach(), x.grad, bn.running_mean, bn.running_var

        torch.manual_seed(0)
        moco = MoCo(TinyVideoCNN(width=4), 16, hidden_dim=8, output_dim=4, queue_size=8).eval()  # eval: BN uses running stats
        clips = inp["clips"][mine]
        out["keys_shuffled"] = moco._keys(clips)
        moco.shuffle_bn = False
        out["keys_direct"] = moco._keys(clips)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_losses_and_batchnorm_equal_single_process_on_the_concatenated_batch(tmp_path):
    # fork: the ranks inherit the imported modules (a spawned interpreter re-imports torch: seconds on a loaded CPU)
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    inp = _inputs()

    # SimCLR: DDP averages the per-rank losses/gradients; the gather's backward sums over ranks.
    z = inp["z"].clone().requires_grad_(True)
    full = NTXentLoss(0.1, gather_distributed=False)(z)
    full.backward()
    assert float(sum(r["simclr_loss"] for r in ranks) / WORLD) == pytest.approx(full.item(), rel=1e-12)
    for r in range(WORLD):
        torch.testing.assert_close(ranks[r]["simclr_grad"] / WORLD, z.grad[:, r * B : (r + 1) * B])

    codes = sinkhorn(inp["scores"][0], 0.05, 3, distributed=False)
    torch.testing.assert_close(torch.cat([r["sinkhorn"] for r in ranks]), codes)
    swav = SwaVLoss(distributed=False)(inp["scores"])
    assert float(sum(r["swav_loss"] for r in ranks) / WORLD) == pytest.approx(float(swav), rel=1e-10)

    bn = nn.BatchNorm3d(4).double()
    x = inp["bn_x"].clone().requires_grad_(True)
    y = bn(x)
    (y * inp["bn_w"]).sum().backward()
    torch.testing.assert_close(torch.cat([r["bn_y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["bn_grad"] for r in ranks]), x.grad)
    for r in ranks:
        torch.testing.assert_close(r["bn_mean"], bn.running_mean)
        torch.testing.assert_close(r["bn_var"], bn.running_var)

    for r in ranks:  # shuffle-BN: keys come back to their own samples
        torch.testing.assert_close(r["keys_shuffled"], r["keys_direct"], rtol=1e-5, atol=1e-6)


def test_cli_under_torchrun_with_two_cpu_ranks(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "trainer", "--objective", "simclr", "--server", "synthetic", "--max-steps", "2", "--profile", "cpu",
           "--checkpoint-dir", str(out), "--synthetic-batch-size", "3", "--synthetic-num-clips", "3",
           "--synthetic-frames", "2", "--synthetic-size-pixels", "16", "--mlp-hidden-dim", "16", "--log-every-steps", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 rank(s) on cpu" in proc.stderr and "global batch 6 videos" in proc.stderr
    assert "all-reduce BatchNorm" in proc.stderr  # SyncBN on CPU
    assert proc.stderr.count("[trainer] saved") == 1  # rank 0 alone logs and saves
    ckpt = load_checkpoint(out)
    assert ckpt["world_size"] == 2 and len(ckpt["per_rank"]) == 2 and ckpt["step"] == 2
    assert any(".running_mean" in k for k in ckpt["model"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
