"""``python -m trainer.eval --dataset ... --root ...``: transfer evaluation (kNN and linear probe on
frozen features of the centre clip) on a generated UCF101-layout set, with the services it starts."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.index import build_index
from clipserve.plan import plan
from tests.trainer_cli_helpers import run_module
from trainer.eval_services import EvalView, eval_services

VIEW = ["--frames-per-clip", "4", "--frame-stride", "2", "--crop-size", "32", "--batch-size", "2",
        "--service-workers", "1", "--backend", "pyav", "--device", "cpu"]




def test_centre_temporal_sampling_places_clips_without_a_draw(ucf101: Path) -> None:
    record = build_index(ucf101, dataset="ucf101", split="train", workers=0, progress=False).records[0]
    one = SamplingConfig(num_clips=1, frames_per_clip=4, frame_stride=2, temporal_sampling="centre")
    start_range = record.duration_seconds - one.clip_duration_seconds
    plans = [plan(record, epoch, 0, seed, one, AugmentConfig.evaluation(32)) for epoch, seed in ((0, 0), (5, 9))]
    assert plans[0].clips == plans[1].clips  # nothing random: the same clip every epoch and seed
    assert plans[0].clips[0].start_seconds == pytest.approx(start_range / 2)
    three = SamplingConfig(num_clips=3, frames_per_clip=4, frame_stride=2, temporal_sampling="centre")
    starts = [c.start_seconds for c in plan(record, 0, 0, 0, three, AugmentConfig.evaluation(32)).clips]
    assert starts == pytest.approx([start_range * f for f in (1 / 6, 3 / 6, 5 / 6)])
    with pytest.raises(ValueError, match="temporal_sampling"):
        SamplingConfig(temporal_sampling="middle")  # type: ignore[arg-type]


def test_eval_services_serve_the_centre_clip_of_each_split(ucf101: Path) -> None:
    view = EvalView(frames_per_clip=4, frame_stride=2, crop_size_pixels=32, batch_size=2, workers=1, backend="pyav")
    index = build_index(ucf101, dataset="ucf101", split="test", split_id=2, workers=0, progress=False)
    with eval_services("ucf101", ucf101, ["train", "test"], 2, view) as (train_url, test_url):
        served = httpx.get(f"{test_url}/v1/videos/1/plan", params={"epoch": 3}, timeout=30).json()
    sampling = SamplingConfig(num_clips=1, frames_per_clip=4, frame_stride=2, temporal_sampling="centre")
    expected = plan(index.records[1], 3, 1, 0, sampling, AugmentConfig.evaluation(32))
    assert served == expected.model_dump(mode="json")
    assert train_url != test_url


def test_trainer_eval_runs_knn_and_linear_probe_on_a_ucf101_split(ucf101: Path, checkpoint: Path) -> None:
    done = run_module("trainer.eval", "--checkpoint", str(checkpoint), "--dataset", "ucf101", "--root", str(ucf101),
                   "--split-id", "3", *VIEW)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    train = build_index(ucf101, dataset="ucf101", split="train", split_id=3, workers=0, progress=False)
    test = build_index(ucf101, dataset="ucf101", split="test", split_id=3, workers=0, progress=False)
    assert result["num_train_videos"] == len(train.records) and result["num_test_videos"] == len(test.records)
    assert 0.0 <= result["knn_top1"] <= 1.0 and 0.0 <= result["linear_probe_top1"] <= 1.0
    assert (result["dataset"], result["split_id"], result["test_split"]) == ("ucf101", 3, "test")


def test_trainer_eval_reports_bad_transfer_arguments(ucf101: Path, checkpoint: Path) -> None:
    both = run_module("trainer.eval", "--checkpoint", str(checkpoint), "--server", "http://127.0.0.1:1",
                   "--dataset", "ucf101", "--root", str(ucf101))
    assert both.returncode == 2 and "either --server" in both.stderr
    bad_split = run_module("trainer.eval", "--checkpoint", str(checkpoint), "--dataset", "ucf101", "--root", str(ucf101),
                        "--split-id", "4", *VIEW)
    assert bad_split.returncode == 2 and "split_id (4)" in bad_split.stderr
