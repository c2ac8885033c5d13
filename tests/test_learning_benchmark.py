"""The learning benchmark's CPU recipe reaches the service and the trainer as it says (no runs: the
flags it builds are parsed by ``clipserve start``'s and the trainer's own parsers)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from clipserve.commands import start
from clipserve.config import AugmentConfig
from clipserve.settings import ServiceConfig
from trainer.config import parse_args as parse_trainer_args

REPO_ROOT = Path(__file__).resolve().parents[1]


def _benchmark():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("learning_benchmark", REPO_ROOT / "benchmarks" / "learning.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _service_config(flags: list[str]) -> ServiceConfig:
    parser = argparse.ArgumentParser()
    start.add_arguments(parser)
    args = parser.parse_args(["--root", "/data", *flags])
    return ServiceConfig(**start._overrides(args))


def test_cpu_services_serve_the_milder_augmentation_and_eval_services_the_centre_crop(tmp_path: Path) -> None:
    learning = _benchmark()
    args = learning.parse_args(["--out", str(tmp_path)])
    train = _service_config(learning.sampling_flags(args, num_clips=4, max_span_seconds=1.5, seed=3))
    assert (train.num_clips, train.max_span_seconds, train.seed, train.crop_size_pixels) == (4, 1.5, 3, 32)
    assert train.augment() == AugmentConfig(crop_size_pixels=32, crop_area_fraction=(0.6, 1.0),
                                            color_jitter_strength=(0.4, 0.4, 0.4, 0.1), blur_probability=0.0)
    evaluation = _service_config([*learning.sampling_flags(args, num_clips=4, max_span_seconds=None, seed=0),
                                  "--eval-mode"])
    assert evaluation.augment() == AugmentConfig.evaluation(32)
    gpu = learning.parse_args(["--gpu", "--out", str(tmp_path)])
    assert _service_config(learning.sampling_flags(gpu, num_clips=2, max_span_seconds=None, seed=0)).augment() == \
        AugmentConfig(crop_size_pixels=112)  # aug+ at GPU scale


def test_cpu_trainers_get_each_objectives_learning_rate_and_temperature(tmp_path: Path) -> None:
    learning = _benchmark()
    args = learning.parse_args(["--out", str(tmp_path)])
    for objective in learning.OBJECTIVES:
        config = parse_trainer_args(["--objective", objective, "--profile", "cpu", "--server", "synthetic",
                                     *learning.trainer_flags(args, objective)])
        assert config.base_lr == learning.CPU_SSL_LR[objective], objective
        if objective != "byol":  # BYOL has no temperature
            assert config.temperature == 0.2, objective
    assert parse_trainer_args(["--objective", "moco", "--profile", "cpu", "--server", "synthetic",
                               *learning.trainer_flags(args, "moco")]).moco_queue_size == 256
    one_lr = learning.parse_args(["--out", str(tmp_path), "--ssl-lr", "0.3"])
    assert "0.3" in learning.trainer_flags(one_lr, "byol")


def test_backbone_flag_picks_every_runs_backbone_and_rejects_unknown_names(tmp_path: Path) -> None:
    learning = _benchmark()
    assert learning.parse_args(["--out", str(tmp_path)]).backbone == "tiny"
    assert learning.parse_args(["--gpu", "--out", str(tmp_path)]).backbone == "r3d_18"
    args = learning.parse_args(["--out", str(tmp_path), "--backbone", "r2plus1d_18"])
    assert args.backbone == "r2plus1d_18"
    with pytest.raises(SystemExit) as error:
        learning.parse_args(["--out", str(tmp_path), "--backbone", "resnet9000"])
    assert error.value.code == 2


def test_service_flags_reach_the_training_services_only(tmp_path: Path) -> None:
    learning = _benchmark()
    args = learning.parse_args(["--out", str(tmp_path), "--service-flag=--grayscale-probability",
                                "--service-flag=1.0"])
    train = _service_config(learning.training_service_flags(args, num_clips=2, max_span_seconds=None, seed=0))
    assert train.augment().grayscale_probability == 1.0
    plain = learning.parse_args(["--out", str(tmp_path)])
    default = _service_config(learning.training_service_flags(plain, num_clips=2, max_span_seconds=None, seed=0))
    assert default.augment().grayscale_probability == AugmentConfig().grayscale_probability != 1.0


def test_extra_run_adds_a_configuration_and_bad_specs_are_usage_errors(tmp_path: Path) -> None:
    learning = _benchmark()
    args = learning.parse_args(["--out", str(tmp_path), "--extra-run", "byol-tmax1.5:byol:2:1.5",
                                "--extra-run", "swav-rho3:swav:3"])
    assert args.extra_runs == [
        learning.RunSpec("byol-tmax1.5", "byol", num_clips=2, max_span_seconds=1.5, group="extra"),
        learning.RunSpec("swav-rho3", "swav", num_clips=3, max_span_seconds=None, group="extra")]
    assert [r.name for r in learning.parse_args(["--out", str(tmp_path), "--extra-run", "byol-tmax1.5:byol:2:1.5",
                                                 "--only", "byol,byol-tmax1.5"]).runs] == ["byol", "byol-tmax1.5"]
    with pytest.raises(SystemExit) as error:
        learning.parse_args(["--out", str(tmp_path), "--only", "byol,bogus"])
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:  # two extra runs of one name would share a checkpoint folder
        learning.parse_args(["--out", str(tmp_path), "--extra-run", "a:byol:2", "--extra-run", "a:moco:2"])
    assert error.value.code == 2
    for bad in ("byol:2", "x:byol:two", "x:barlow:2", "x:byol:1", "x:byol:2:-1", "moco:moco:2", ":byol:2"):
        with pytest.raises(SystemExit) as error:
            learning.parse_args(["--out", str(tmp_path), "--extra-run", bad])
        assert error.value.code == 2, bad


def _readout_benchmark():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # it imports its sibling, learning.py
    spec = importlib.util.spec_from_file_location("readout_benchmark", REPO_ROOT / "benchmarks" / "readout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_readout_benchmark_runs_reach_the_protocols_parsers_bounded_by_steps(tmp_path: Path) -> None:
    from trainer.eval_services import service_command
    from trainer.readout_run import readout_views
    from trainer.readout_config import FinetuneConfig, LinearConfig, parse_config

    readout = _readout_benchmark()
    args = readout.parse_args(["--out", str(tmp_path), "--linear-steps", "7", "--finetune-steps", "5"])
    linear = parse_config(LinearConfig, readout.linear_command(args, "moco", 1)[3:], prog="linear", description="")
    assert (linear.max_steps, linear.seed, linear.profile, linear.checkpoint) == (7, 1, "cpu", str(tmp_path / "moco-seed1"))
    assert linear.max_seconds == 30 * 60 and linear.head_batch_norm  # a far safety net, not the bound
    finetune = parse_config(FinetuneConfig, readout.finetune_command(args, "random", 0)[3:], prog="finetune",
                            description="")
    assert (finetune.max_steps, finetune.checkpoint, finetune.split_id, finetune.schedule) == (5, "random", "1", "cosine")
    assert (finetune.dropout, finetune.base_lr) == (0.0, 0.1)  # the cpu profile (0.8 keeps a 64-d head at chance)
    train_view, test_view = readout_views(linear)
    train = _service_config(service_command("k400", Path("/data"), "train", 1, train_view)[4:])
    test = _service_config(service_command("k400", Path("/data"), "val", 1, test_view)[4:])
    assert (train.num_clips, train.temporal_sampling, train.eval_mode, train.target_fps) == (1, "random", False, 15.0)
    assert train.augment().crop_area_fraction == (0.6, 1.0) and train.augment().color_jitter_probability == 0
    assert (test.temporal_sampling, test.num_clips, test.spatial_crops, test.eval_mode) == ("uniform", 4, 1, True)
    with pytest.raises(SystemExit):
        readout.parse_args(["--out", str(tmp_path), "--seeds", "1"])  # a spread needs two seeds
