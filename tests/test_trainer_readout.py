"""``python -m trainer.linear`` and ``python -m trainer.finetune`` (the paper's readout protocols):
the view averaging of the multi-view test, the frozen backbone staying frozen, an exact resume,
fine-tuning on the official splits, and clear errors; end to end on generated sample sets with the
services the commands start themselves."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clipserve.batch import Batch
from clipserve.sample import build_sample
from clipserve.sample.spec import make_learnable_spec
from tests.trainer_cli_helpers import run_module
from trainer.readout import average_view_probabilities, multiview_test, topk_accuracy

SMALL = ["--profile", "cpu", "--batch-size", "4", "--test-batch-size", "4", "--test-num-clips", "2"]




def _result(done: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learnable")
    build_sample(root, make_learnable_spec(3, 4, seed=2, duration_seconds=2.0), workers=1, progress=False)
    return root


# --- the multi-view test's arithmetic -------------------------------------------------------------


def test_views_are_averaged_as_probabilities_per_video() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0],      # video 0: views 0, 1
                           [0.0, 0.0, 2.0], [0.0, 0.0, 2.0]])     # video 1
    got = average_view_probabilities(logits, 2)
    expected = torch.stack([(torch.softmax(logits[0], 0) + torch.softmax(logits[1], 0)) / 2,
                            torch.softmax(logits[2], 0)])
    torch.testing.assert_close(got, expected)
    assert torch.allclose(got.sum(1), torch.ones(2))
    # the mean of probabilities, not of logits: they pick different classes here
    confident_wrong = torch.tensor([[10.0, 0.0], [-2.0, 0.0], [-2.0, 0.0]])
    assert average_view_probabilities(confident_wrong, 3).argmax(1).item() == 1
    assert confident_wrong.mean(0).argmax().item() == 0
    with pytest.raises(ValueError, match=r"not a multiple of views_per_video \(3\)"):
        average_view_probabilities(logits, 3)


def test_topk_accuracy_counts_labels_among_the_k_best() -> None:
    probabilities = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(probabilities, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(probabilities, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(probabilities, labels, 5) == 1.0  # k capped at the class count


class _BrightnessClassifier(nn.Module):
    """Class scores from a clip's mean brightness: (N, C, T, H, W) → (N, 2) = [−m, m]·8."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        m = clips.mean(dim=(1, 2, 3, 4))
        return torch.stack([-m, m], dim=1) * 8


def test_multiview_test_groups_each_videos_views_and_skips_padding_and_repeats() -> None:
    views, size = 3, 8
    levels = np.array([[10, 20, 250], [240, 250, 5], [0, 0, 0]], dtype=np.uint8)  # (B, V) brightness per view
    clips = np.broadcast_to(levels[:, :, None, None, None, None], (3, views, 3, 2, size, size)).copy()
    first = Batch(torch.from_numpy(clips), torch.tensor([7, 3, 7]), torch.tensor([1, 0, 1]),
                  torch.zeros(3, views), torch.tensor([False, False, True]), 0, 0)
    again = Batch(torch.from_numpy(clips[:2].copy()), torch.tensor([3, 9]), torch.tensor([0, 1]),
                  torch.zeros(2, views), torch.tensor([False, False]), 0, 1)
    next_epoch = Batch(torch.from_numpy(clips[:1].copy()), torch.tensor([1]), torch.tensor([0]), torch.zeros(1, views),
                       torch.tensor([False]), 1, 0)
    result = multiview_test(_BrightnessClassifier(), [first, again, next_epoch], "cpu")
    assert result.video_index.tolist() == [7, 3, 9] and result.labels.tolist() == [1, 0, 1]
    assert result.views_per_video == views
    model = _BrightnessClassifier()
    from trainer.utils import normalize_clips
    for row, source in ((0, (first, 0)), (1, (first, 1)), (2, (again, 1))):
        batch, n = source
        x = normalize_clips(batch.clips[n : n + 1], "cpu")[0]  # (V, C, T, H, W)
        expected = torch.softmax(model(x), dim=1).mean(0)
        torch.testing.assert_close(result.probabilities[row], expected)


# --- trainer.linear end to end ---------------------------------------------------------------------


def _backbone_state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    model = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}


def test_linear_protocol_keeps_the_backbone_frozen_and_resumes_exactly(learnable: Path, checkpoint: Path,
                                                                       tmp_path: Path) -> None:
    common = ["trainer.linear", "--checkpoint", str(checkpoint), "--dataset", "k400", "--root", str(learnable),
              *SMALL, "--max-steps", "4", "--checkpoint-every-steps", "2"]
    done = run_module(*common, "--out-dir", str(tmp_path / "whole"))
    assert done.returncode == 0, done.stderr
    result = _result(done)
    assert (result["steps"], result["completed"], result["num_classes"]) == (4, True, 3)
    assert result["num_test_videos"] == 3 * 1 and result["views_per_video"] == 2  # 1 val video a class, K=2, S=1
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert json.loads((tmp_path / "whole" / "result.json").read_text()) == result
    # the backbone is exactly the pre-trained one (weights and BN statistics); the head learned
    pretrained = _backbone_state(checkpoint / "last.pt", "backbone.")
    after = _backbone_state(tmp_path / "whole" / "last.pt", "backbone.")
    assert pretrained.keys() == after.keys() and any("running_mean" in k for k in after)
    for key, value in pretrained.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    head = _backbone_state(tmp_path / "whole" / "last.pt", "linear.")
    assert head["bias"].abs().sum() > 0  # initialised to zero, moved by training

    # the same run in two parts (--stop-after-steps, then --resume) ends with the same weights
    part = run_module(*common, "--out-dir", str(tmp_path / "parts"), "--stop-after-steps", "2")
    assert part.returncode == 3, part.stderr
    assert _result(part)["completed"] is False and "step 2 of 4" in _result(part)["error"]
    resumed = run_module(*common, "--out-dir", str(tmp_path / "parts"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    whole, parts = (torch.load(tmp_path / d / "last.pt", weights_only=False)["model"] for d in ("whole", "parts"))
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key], rtol=0, atol=0, msg=key)
    assert _result(resumed)["top1"] == result["top1"]


def test_linear_protocol_refuses_bad_input_clearly(learnable: Path, checkpoint: Path, tmp_path: Path) -> None:
    other = run_module("trainer.linear", "--checkpoint", str(checkpoint), "--backbone", "r3d_18", "--dataset", "k400",
                    "--root", str(learnable), *SMALL)
    assert other.returncode == 2
    assert "pre-trained with backbone 'tiny', not 'r3d_18'" in other.stderr and "Traceback" not in other.stderr
    no_val = tmp_path / "no-val"
    shutil.copytree(learnable / "train", no_val / "train")
    (no_val / "annotations").mkdir()
    shutil.copy(learnable / "annotations" / "train.csv", no_val / "annotations" / "train.csv")
    missing = run_module("trainer.linear", "--checkpoint", str(checkpoint), "--dataset", "k400", "--root", str(no_val),
                      *SMALL, "--max-steps", "1", "--out-dir", str(tmp_path / "out"))
    assert missing.returncode == 2 and "split 'val' not found" in missing.stderr and "--test-split" in missing.stderr
    crops = run_module("trainer.linear", "--checkpoint", "random", "--dataset", "k400", "--root", str(learnable),
                    "--test-spatial-crops", "2")
    assert crops.returncode == 2 and "--test-spatial-crops (2) must be 1 or 3" in crops.stderr
    split = run_module("trainer.linear", "--checkpoint", "random", "--dataset", "ucf101", "--root", str(learnable),
                       "--split-id", "4")
    assert split.returncode == 2 and "split_id: Input should be less than or equal to 3, got 4" in split.stderr


def test_linear_protocol_reads_the_official_split_it_is_given(ucf101: Path, checkpoint: Path, tmp_path: Path) -> None:
    done = run_module("trainer.linear", "--checkpoint", str(checkpoint), "--dataset", "ucf101", "--root", str(ucf101),
                      "--split-id", "3", *SMALL, "--max-steps", "2", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = _result(done)
    assert result["split_id"] == 3 and result["completed"] is True


# --- trainer.finetune end to end -------------------------------------------------------------------


def test_finetune_trains_the_whole_network_on_an_official_split(ucf101: Path, checkpoint: Path, tmp_path: Path) -> None:
    done = run_module("trainer.finetune", "--checkpoint", str(checkpoint), "--dataset", "ucf101", "--root", str(ucf101),
                   "--split-id", "2", *SMALL, "--max-steps", "3", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = _result(done)
    assert result["split_ids"] == [2] and result["completed"] is True and result["preset"] == "paper"
    (split,) = result["splits"]
    assert (split["steps"], split["test_split"], split["schedule"]) == (3, "test", "step")
    assert result["top1_mean"] == split["top1"] and 0.0 <= split["top1"] <= split["top5"] <= 1.0
    assert "dropout 0.0" in result["protocol"]  # the cpu profile; the paper preset's 0.8 below
    pretrained = _backbone_state(checkpoint / "last.pt", "backbone.")
    tuned = _backbone_state(tmp_path / "split2" / "last.pt", "backbone.")
    assert any(not torch.equal(tuned[k], v) for k, v in pretrained.items() if v.is_floating_point())


def test_finetune_presets_are_the_papers_and_the_repos() -> None:
    from trainer.readout_config import FinetuneConfig, LinearConfig, parse_config

    common = ["--checkpoint", "random", "--dataset", "ucf101", "--root", "/data"]
    paper = parse_config(FinetuneConfig, common, prog="finetune", description="")
    assert (paper.dropout, paper.schedule, paper.base_lr, paper.reference_batch_size, paper.epochs) == \
        (0.8, "step", 0.025, 64, 200.0)
    assert paper.milestones == (0.3, 0.6, 0.9) and paper.weight_decay == 0.0  # x0.1 at epochs 60/120/180 of 200
    cosine = parse_config(FinetuneConfig, [*common, "--preset", "cosine"], prog="finetune", description="")
    assert (cosine.schedule, cosine.base_lr, cosine.dropout) == ("cosine", 0.01, 0.8)
    linear = parse_config(LinearConfig, ["--checkpoint", "random", "--dataset", "k400", "--root", "/data"],
                          prog="linear", description="")
    assert (linear.epochs, linear.warmup_epochs, linear.base_lr, linear.reference_batch_size, linear.weight_decay,
            linear.test_num_clips, linear.test_spatial_crops, linear.test_crop_size) == (60, 8, 4.0, 512, 0.0, 10, 3, 256)


def test_finetune_refuses_bad_splits_and_datasets(ucf101: Path, learnable: Path, checkpoint: Path) -> None:
    split = run_module("trainer.finetune", "--checkpoint", str(checkpoint), "--dataset", "ucf101", "--root", str(ucf101),
                    "--split-id", "4")
    assert split.returncode == 2 and "--split-id ('4') must be 1, 2, 3 or all" in split.stderr
    dataset = run_module("trainer.finetune", "--checkpoint", str(checkpoint), "--dataset", "k400", "--root",
                      str(learnable))
    assert dataset.returncode == 2 and "--dataset ('k400') must be one of ucf101, hmdb51" in dataset.stderr
    other = run_module("trainer.finetune", "--checkpoint", str(checkpoint), "--backbone", "r2plus1d_18", "--dataset",
                    "ucf101", "--root", str(ucf101))
    assert other.returncode == 2 and "not 'r2plus1d_18'" in other.stderr


def test_the_time_cap_is_a_safety_net_whose_cut_run_is_not_completed(tmp_path: Path) -> None:
    from trainer.backbones import build_backbone
    from trainer.data import SyntheticClipStream
    from trainer.readout import VideoClassifier
    from trainer.readout_fit import fit

    backbone, dim = build_backbone("tiny")
    model = VideoClassifier(backbone, dim, 4, freeze_backbone=True)
    stream = SyntheticClipStream(batch_size=2, num_clips=1, frames=2, size_pixels=16, num_videos=8)
    common = dict(lr_at=lambda step: 0.1, weight_decay=0.0, momentum=0.9, device=torch.device("cpu"),
                  config={"run": 1}, log_every_steps=1)
    cut = fit(model, stream, max_steps=3, max_seconds=1e-9, out_dir=tmp_path / "cut", resume=False, **common)
    assert (cut.completed, cut.steps_done, cut.stopped_by) == (False, 0, "the --max-seconds safety net") and (tmp_path / "cut" / "last.pt").is_file()
    whole = fit(model, SyntheticClipStream(batch_size=2, num_clips=1, frames=2, size_pixels=16, num_videos=8),
                max_steps=3, max_seconds=3600.0, out_dir=tmp_path / "whole", resume=False, **common)
    assert (whole.completed, whole.steps_done, len(whole.losses)) == (True, 3, 3)
