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


def test_service_augmentation_fields_are_the_planners_own() -> None:
    """Every AugmentConfig field is a ``clipserve start`` field with the same default and help;
    ``augment()`` carries the values over, and ``eval_mode`` still gives the plain centre crop."""
    for name, info in AugmentConfig.model_fields.items():
        mine = ServiceConfig.model_fields[name]
        assert (mine.annotation, mine.default, mine.description) == (info.annotation, info.default, info.description)
    assert ServiceConfig(root=Path("/data")).augment() == AugmentConfig()
    config = ServiceConfig(root=Path("/data"), crop_size_pixels=32, crop_area_fraction=(0.6, 1.0), blur_probability=0.0,
                           color_jitter_strength=(0.4, 0.4, 0.4, 0.1))
    augment = config.augment()
    assert (augment.crop_area_fraction, augment.blur_probability, augment.color_jitter_strength) == (
        (0.6, 1.0), 0.0, (0.4, 0.4, 0.4, 0.1))
    assert config.model_copy(update={"eval_mode": True}).augment() == AugmentConfig.evaluation(32)


def test_tuple_fields_take_one_flag_with_several_values(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_model_arguments(parser, ServiceConfig, env_prefix="CLIPSERVE_")
    args = parser.parse_args(["--root", "/data", "--crop-area", "0.6", "1", "--color-jitter-strength", "0.4", "0.4", "0.4",
                              "0.1", "--no-random-resized-crop"])
    assert vars(args) == {"root": Path("/data"), "crop_area_fraction": [0.6, 1.0], "random_resized_crop": False,
                          "color_jitter_strength": [0.4, 0.4, 0.4, 0.1]}
    config = ServiceConfig(**vars(args))
    assert (config.crop_area_fraction, config.augment().random_resized_crop) == ((0.6, 1.0), False)
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser.parse_args(["--root", "/data", "--crop-area", "0.6"])  # one value of two
    with pytest.raises(ValueError, match=r"blur_probability \(1.5\) must be in \[0.0, 1.0\]"):
        ServiceConfig(root=Path("/data"), blur_probability=1.5)
    monkeypatch.setenv("CLIPSERVE_CROP_AREA_FRACTION", "[0.5, 0.9]")  # env: JSON
    assert ServiceConfig(root=Path("/data")).augment().crop_area_fraction == (0.5, 0.9)


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
    assert augment == AugmentConfig(crop_size_pixels=32)  # the service's defaults
    for name, flag in (("crop_area_fraction", "--crop-area"), ("color_jitter_strength", "--color-jitter-strength"),
                       ("blur_probability", "--blur-probability"), ("random_resized_crop", "--no-random-resized-crop")):
        description = (AugmentConfig.model_fields[name].description or "").strip().rstrip(".")
        assert description in _help_of(start_parser, flag) and description in _help_of(plan_parser, flag), flag
    args = plan_parser.parse_args(["--root", "/data", "--video", "0", "--crop-area", "0.6", "1", "--blur-probability", "0"])
    assert plan.configs_from_args(args)[1].model_dump() == AugmentConfig(crop_area_fraction=(0.6, 1.0),
                                                                         blur_probability=0.0).model_dump()


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


def _clipserve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clipserve", *argv], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)


def test_every_command_prints_one_line_for_a_bad_value(tmp_path: Path) -> None:
    """Issue 23, item 5: ``plan --num-clips 0`` says what ``start --num-clips 0`` says, in one line,
    without pydantic's dump (``1 validation error for …``, ``errors.pydantic.dev``)."""
    outputs = {command: _clipserve(command, "--root", str(tmp_path), "--num-clips", "0",
                                   *(["--video", "0"] if command == "plan" else ["--port", "0"]))
               for command in ("plan", "start")}
    for command, result in outputs.items():
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"clipserve {command}: error: invalid ") and "num_clips (0) must be in [1, 64]" in lines[0]
        assert "pydantic" not in result.stderr and "validation error for" not in result.stderr


def test_a_config_file_key_with_a_typo_names_the_field_meant(tmp_path: Path) -> None:
    """Issue 23, item 10: ``crop_size = 64`` in a config file suggests ``crop_size_pixels``."""
    from clipserve.config_cli import nearest_field
    from clipserve.errors import ConfigError
    from clipserve.settings import load_service_config

    fields = list(ServiceConfig.model_fields)
    assert nearest_field("crop_size", fields) == "crop_size_pixels"
    assert nearest_field("batchsize", fields) == "batch_size"
    assert nearest_field("num-clips", fields) == "num_clips"
    assert nearest_field("zzz", fields) is None
    config = tmp_path / "service.toml"
    config.write_text("crop_size = 64\nbatchsize = 4\nzzz = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_service_config({"root": tmp_path}, config)
    message = str(caught.value)
    assert message.startswith("invalid service config: crop_size: unknown key; did you mean crop_size_pixels?")
    assert "batchsize: unknown key; did you mean batch_size?" in message
    assert "zzz: unknown key (known keys: backend, batch_size," in message
    assert "Extra inputs are not permitted" not in message
    result = _clipserve("start", "--root", str(tmp_path), "--config", str(config), "--port", "0")
    assert result.returncode == 2 and "did you mean crop_size_pixels?" in result.stderr


def test_boolean_flags_say_what_they_do_and_what_holds_without_them() -> None:
    """Issue 23, item 11: ``--no-random-resized-crop`` must not read ``(default: True)``."""
    from clipserve.commands import plan, start

    for command in (start, plan):
        parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command.add_arguments(parser)
        help_text = parser.format_help()
        negation = " ".join(_help_of(parser, "--no-random-resized-crop").split())
        assert negation.startswith("turn off: Inception-style crop") and "on unless --no-random-resized-crop is given" in negation
        assert "on unless --eval-mode" not in help_text and "off unless --eval-mode is given" in " ".join(help_text.split())
        assert "default: True" not in help_text and "default: False" not in help_text
        if command is plan:  # the defaults still reach the namespace
            args = parser.parse_args(["--root", "/data", "--video", "0"])
            assert (args.random_resized_crop, args.eval_mode) == (True, False)
            args = parser.parse_args(["--root", "/data", "--video", "0", "--no-random-resized-crop", "--eval-mode"])
            assert (args.random_resized_crop, args.eval_mode) == (False, True)
    from trainer.config import help_text as trainer_help

    text = " ".join(trainer_help().split())
    assert "Nesterov momentum (on by default; --nesterov false turns it off)" in text
    assert "(off by default; --resume turns it on)" in text


def test_start_checks_the_dataset_name_before_any_work(tmp_path: Path) -> None:
    """Issue 23, item 7: ``start --dataset k4OO`` fails before it says it is indexing."""
    result = _clipserve("start", "--dataset", "k4OO", "--root", str(tmp_path), "--port", "0")
    assert result.returncode == 2
    assert "dataset 'k4OO' is unknown; known datasets: folder, hmdb51, k400" in result.stderr
    assert "indexing" not in result.stderr and not (tmp_path / ".clipserve").exists()


def test_a_port_in_use_suggests_port_0(tmp_path: Path) -> None:
    """Issue 23, item 8: the second service on a port says how to pick a free one."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _clipserve("start", "--root", str(tmp_path), "--port", str(port))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "pick a free port with --port 0" in result.stderr and "indexing" not in result.stderr
