"""One source of configuration: the flags of ``clipserve start``, ``clipserve plan`` and the trainer
are generated from the pydantic fields (``clipserve.config_cli``), each field declared once with
one description, and the service shares the planner's sampling fields instead of restating them."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.config_cli import add_model_arguments, field_flag, model_fields
from clipserve.settings import ServiceConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def _help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    for action in parser._actions:
        if flag in action.option_strings:
            return action.help or ""
    raise AssertionError(f"{flag} is not a flag")


def test_service_sampling_fields_are_the_planners_own() -> None:
    for name, info in SamplingConfig.model_fields.items():
        mine = ServiceConfig.model_fields[name]
        assert (mine.annotation, mine.default, mine.description) == (info.annotation, info.default, info.description)
    crop = ServiceConfig.model_fields["crop_size_pixels"]
    assert crop.description == AugmentConfig.model_fields["crop_size_pixels"].description
    assert field_flag("crop_size_pixels", crop) == "--crop-size"


def test_every_field_of_every_config_has_a_description() -> None:
    from trainer.config import TrainConfig

    for model in (SamplingConfig, AugmentConfig, ServiceConfig, TrainConfig):
        missing = [name for name, info in model_fields(model).items() if not (info.description or "").strip()]
        assert missing == [], f"{model.__name__} fields without a description: {missing}"


def test_start_and_plan_share_flag_and_help_text() -> None:
    from clipserve.commands import plan, start

    start_parser, plan_parser = argparse.ArgumentParser(), argparse.ArgumentParser()
    start.add_arguments(start_parser)
    plan.add_arguments(plan_parser)
    for flag in ("--num-clips", "--frames-per-clip", "--frame-stride", "--target-fps", "--max-span-seconds",
                 "--min-span-seconds", "--crop-size", "--eval-mode", "--seed", "--root", "--dataset", "--split"):
        description = _help_of(plan_parser, flag).split(" (")[0]
        assert description and _help_of(start_parser, flag).startswith(description), flag
    args = plan_parser.parse_args(["--root", "/data", "--video", "3", "--num-clips", "4", "--crop-size", "32"])
    sampling, augment = plan.configs_from_args(args)
    assert (sampling.num_clips, sampling.frames_per_clip, augment.crop_size_pixels) == (4, 8, 32)


def test_generated_flags_leave_unset_fields_to_env_and_files() -> None:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser, ServiceConfig, env_prefix="CLIPSERVE_")
    args = parser.parse_args(["--root", "/data", "--crop-size", "64", "--eval-mode", "--max-span-seconds", "2.5"])
    assert vars(args) == {"root": Path("/data"), "crop_size_pixels": 64, "eval_mode": True, "max_span_seconds": 2.5}
    assert "env CLIPSERVE_BATCH_SIZE" in _help_of(parser, "--batch-size")


def test_trainer_flags_come_from_the_fields() -> None:
    from trainer.config import TrainConfig, build_parser, parse_args

    parser = build_parser()
    for name in model_fields(TrainConfig):
        assert "--" + name.replace("_", "-") in parser._option_string_actions, name
    config = parse_args(["--objective", "simclr", "--progress", "false", "--resume", "--max-steps=5"])
    assert (config.progress, config.resume, config.max_steps, config.optimizer) == (False, True, 5, "lars")


def test_trainer_config_star_import_works() -> None:
    code = "from trainer.config import *\nprint(TrainConfig.__name__, make_config('moco').objective)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["TrainConfig", "moco"]


@pytest.mark.parametrize("argv", [["--crop-size", "big"], ["--num-clips"]])
def test_bad_generated_flags_are_argparse_errors(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_model_arguments(parser, ServiceConfig)
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser.parse_args(["--root", "/data", *argv])
