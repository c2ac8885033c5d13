"""The training loop: exact resume for every objective, CLI behaviour, logs and checkpoints, evaluation."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import load_checkpoint
from trainer.cli import main as cli_main
from trainer.config import ConfigError, make_config
from trainer.data import SyntheticClipStream
from trainer.eval import extract_features, knn_accuracy, linear_probe_accuracy
from trainer.eval import main as eval_main
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(  # tiny heads, queue and prototypes so a step takes a fraction of a second on a loaded CPU
    server="synthetic", mlp_hidden_dim=32, output_dim=16, moco_queue_size=32, swav_num_prototypes=10,
    swav_queue_size=8, swav_queue_start_step=2, swav_freeze_prototypes_steps=2, progress=False,
    log_every_steps=1, checkpoint_every_steps=1000,
)


@pytest.fixture(autouse=True)
def _one_thread_and_restored_rng():
    """One intra-op thread: on a shared 2-core machine, 2 threads per process oversubscribe badly."""
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(state)


def _stream(limit_steps: int | None = None) -> SyntheticClipStream:
    # 12 videos, 4 per batch: 3 steps per epoch, so the 6-step runs cross two epoch boundaries
    return SyntheticClipStream(batch_size=4, num_clips=3, frames=4, size_pixels=32, num_videos=12, seed=5,
                               limit_steps=limit_steps)


@pytest.mark.parametrize("objective", ["moco", "byol", "simclr", "swav"])
def test_stopped_and_resumed_run_gives_the_same_losses(objective, tmp_path):
    base = dict(SMALL, max_steps=6)
    straight = train(make_config(objective, "cpu", checkpoint_dir=str(tmp_path / "straight"), **base), _stream())
    assert straight.final_step == 6 and len(straight.losses) == 6

    first = train(make_config(objective, "cpu", checkpoint_dir=str(tmp_path / "split"), **base), _stream(limit_steps=4))
    assert first.final_step == 4  # the source ended: a stopped run, checkpointed at step 4
    ckpt = load_checkpoint(tmp_path / "split")
    assert ckpt["step"] == 4 and ckpt["per_rank"][0]["stream"] == {"epoch": 1, "step": 1}
    assert ckpt["per_rank"][0]["last_batch"] == {"epoch": 1, "step": 0}
    resumed = train(make_config(objective, "cpu", checkpoint_dir=str(tmp_path / "split"), resume=True, **base), _stream())
    assert resumed.first_step == 4 and resumed.final_step == 6
    assert first.losses + resumed.losses == straight.losses  # bit-exact

    metrics = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(0.0 <= m["data_wait_fraction"] <= 1.0 and m["clips_per_second"] > 0 for m in metrics)


class _CtrlCAfter:
    """A batch source that sends this process SIGINT (Ctrl-C) when it hands out batch number ``k``."""

    def __init__(self, stream, k: int) -> None:
        self.stream, self.k = stream, k

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state) -> None:
        self.stream.load_state_dict(state)

    def __iter__(self):
        for n, batch in enumerate(self.stream, start=1):
            if n == self.k:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch


def test_ctrl_c_stops_after_the_step_and_resumes_exactly(tmp_path):
    base = dict(SMALL, max_steps=6)
    straight = train(make_config("moco", "cpu", checkpoint_dir=str(tmp_path / "straight"), **base), _stream())
    first = train(make_config("moco", "cpu", checkpoint_dir=str(tmp_path / "split"), **base), _CtrlCAfter(_stream(), 3))
    assert first.final_step == 3  # the step in flight finished, then the run stopped and saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = train(make_config("moco", "cpu", checkpoint_dir=str(tmp_path / "split"), resume=True, **base), _stream())
    assert first.losses + resumed.losses == straight.losses  # bit-exact


def test_checkpoint_holds_the_moco_queue_and_momentum_encoder(tmp_path):
    cfg = make_config("moco", "cpu", checkpoint_dir=str(tmp_path), **dict(SMALL, max_steps=2))
    train(cfg, _stream())
    ckpt = load_checkpoint(tmp_path)
    model = ckpt["model"]
    assert model["queue"].shape == (32, 16)
    assert int(model["queue_ptr"]) == (2 * 3 * 4) % 32  # 2 steps × ρ=3 key sets × B=4
    assert any(k.startswith("backbone_momentum.") for k in model)
    assert ckpt["config"]["objective"] == "moco" and ckpt["optimizer"]["state"]
    assert set(ckpt["per_rank"][0]["rng"]) >= {"python", "numpy", "torch"}


def test_resume_rejects_a_checkpoint_of_another_objective(tmp_path):
    train(make_config("byol", "cpu", checkpoint_dir=str(tmp_path), **dict(SMALL, max_steps=1)), _stream())
    with pytest.raises(ConfigError, match="is for 'byol', not 'simclr'"):
        train(make_config("simclr", "cpu", checkpoint_dir=str(tmp_path), resume=True, **dict(SMALL, max_steps=2)), _stream())


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        train(make_config("moco", "cpu", checkpoint_dir=str(tmp_path), resume=True, **SMALL), _stream())


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_trains_logs_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    # in-process (the same main() as `python -m trainer`); the torchrun test runs it as real subprocesses
    status = cli_main(["--objective", "swav", "--profile", "cpu", "--server", "synthetic", "--max-steps", "3",
                    "--checkpoint-dir", str(out), "--synthetic-batch-size", "4", "--synthetic-frames", "4",
                    "--synthetic-size-pixels", "32", "--synthetic-num-videos", "16", "--mlp-hidden-dim", "32",
                    "--swav-num-prototypes", "10", "--log-every-steps", "1"])
    stderr = capsys.readouterr().err
    assert status == 0, stderr
    assert "saved" in stderr and "clips_s=" in stderr and "wait=" in stderr  # the progress bar
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    # the evaluation CLI, in-process (saves a second interpreter start on a loaded machine)
    assert eval_main(["--checkpoint", str(out), "--server", "synthetic", "--k", "5", "--probe-steps", "20"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["num_train_videos"] + result["num_test_videos"] == 16 and 0.0 <= result["knn_top1"] <= 1.0
    # accuracies over 4 test videos resolve quarters: printed as such, not as 0.25000000372529
    for key in ("knn_top1", "linear_probe_top1"):
        assert (result[key] * result["num_test_videos"]).is_integer() and len(repr(result[key])) <= 5, result
    # progress on stderr: what is extracted, counts and rate, then what is fitted
    assert "[eval] --server (80% train, 20% test): extracting features" in captured.err
    assert re.search(r"\[eval\] --server \(80% train, 20% test\): 16 videos in [\d.]+ s \([\d.]+ videos/s\)", captured.err)
    assert "[eval] kNN (k=5) and linear probe (20 steps) on 12 train and 4 test videos" in captured.err
    assert result["checkpoint_step"] == 3 and result["knn_weighting"] == "temperature"


def test_cli_rejects_unknown_options_and_a_missing_server_with_status_2():
    proc = _run_cli("trainer", "--objective", "moco", "--server", "synthetic", "--queue-size", "10")
    assert proc.returncode == 2
    assert "unknown option --queue-size (did you mean --swav-queue-size?)" in proc.stderr
    proc = _run_cli("trainer", "--objective", "moco")
    assert proc.returncode == 2 and "--server is required" in proc.stderr


# ----------------------------------------------------------------------------- evaluation (pure functions)
def _clusters(n_per_class: int, num_classes: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


def test_knn_and_linear_probe_on_separable_and_random_features():
    f_tr, y_tr = _clusters(30, 4, 16, 0.1, seed=1)
    f_te, y_te = _clusters(10, 4, 16, 0.1, seed=2)
    assert knn_accuracy(f_tr, y_tr, f_te, y_te, k=20) == 1.0
    assert knn_accuracy(f_tr, y_tr, f_te, y_te, k=20, weighting="majority") == 1.0
    assert linear_probe_accuracy(f_tr, y_tr, f_te, y_te) == 1.0
    shuffled = y_tr[torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(3))]
    assert knn_accuracy(f_tr, shuffled, f_te, y_te, k=20) < 0.6  # labels carry no signal → near chance (0.25)


def test_knn_temperature_weighting_differs_from_majority():
    # 1 very close neighbour of class 0 against 2 far ones of class 1: weighted votes pick 0, majority picks 1
    train_f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    train_y = torch.tensor([0, 1, 1])
    test_f, test_y = torch.tensor([[1.0, 0.02]]), torch.tensor([0])
    assert knn_accuracy(train_f, train_y, test_f, test_y, k=3, temperature=0.07) == 1.0
    assert knn_accuracy(train_f, train_y, test_f, test_y, k=3, weighting="majority") == 0.0


def test_extract_features_reads_one_epoch_and_skips_padding():
    stream = SyntheticClipStream(batch_size=4, num_clips=2, frames=2, size_pixels=16, num_videos=10, seed=1)
    feats, labels, videos = extract_features(lambda x: x.mean(dim=(2, 3, 4)), stream)  # (N, C) features
    # 10 videos in 3 batches of 4: the last batch has 2 padding entries, then epoch 1 stops the pass
    assert feats.shape == (10, 3) and sorted(videos.tolist()) == list(range(10))
    torch.testing.assert_close(labels, videos % 4)


def test_a_run_that_stops_between_log_steps_still_writes_its_last_record(tmp_path):
    """A loop stopped by its source (or its time budget) before a log boundary records the steps it made."""
    config = make_config("simclr", "cpu", checkpoint_dir=str(tmp_path), **dict(SMALL, max_steps=100, log_every_steps=50))
    result = train(config, _stream(limit_steps=3))
    assert result.final_step == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3]
    assert records[0]["loss"] == pytest.approx(sum(result.losses) / 3)


def test_a_gpu_sized_backbone_on_the_cpu_is_warned_about(tmp_path, capsys):
    """Issue 23, item 3: ``--backbone r3d_18`` (or slow_r50) on a CPU says it needs a GPU and names the
    CPU-sized command; the tiny backbone gets no such line."""
    source = dict(batch_size=2, num_clips=2, frames=4, size_pixels=32, num_videos=4)
    big = make_config("moco", profile="cpu", **{**SMALL, "backbone": "r3d_18", "max_steps": 1, "device": "cpu",
                                                 "checkpoint_dir": str(tmp_path / "big")})
    train(big, SyntheticClipStream(**source))
    err = capsys.readouterr().err
    assert "warning: --backbone r3d_18 is running on the CPU with clips (2, 2, 3, 4, 32, 32)" in err
    assert "need a GPU (--device cuda); on a CPU train with --profile cpu --backbone tiny" in err
    tiny = make_config("moco", profile="cpu", **{**SMALL, "max_steps": 1, "device": "cpu",
                                                  "checkpoint_dir": str(tmp_path / "tiny")})
    train(tiny, SyntheticClipStream(**source))
    assert "is running on the CPU" not in capsys.readouterr().err


def test_eval_rounds_an_accuracy_to_what_its_count_resolves():
    from trainer.utils import round_to_resolution

    assert round_to_resolution(0.20000000298023224, 5) == 0.2
    assert round_to_resolution(3 / 16, 16) == 0.188  # 16 videos: steps of 0.0625, 3 decimals tell them apart
    assert round_to_resolution(1 / 3, 3) == 0.33
    assert round_to_resolution(1234 / 3783, 3783) == 0.3262  # 0.326196…: 5 decimals for 1/3783
