"""CPU augmentation (clipserve.executors.augment): semantics, consistency within a clip, independence
across clips, and parity of the fast OpenCV path with the torchvision float reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clipserve.config import AugmentConfig
from clipserve.executors.augment import (
    AUGMENT_PARITY_MAX_ABS_TOLERANCE,
    AUGMENT_PARITY_TOLERANCE,
    augment_clip,
    output_blur_sigma_pixels,
    reference_augment_clip,
)
from clipserve.plan import draw_augment_params
from clipserve.plan_models import AugmentParams, ColorJitterParams

ALL_OPS = ["brightness", "contrast", "saturation", "hue"]


def natural_region(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(T, h, w, 3) uint8: smooth colour field + noise + a moving saturated square (natural-ish statistics)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(10, 10, 3)).astype(np.float32)
    base = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = base + rng.normal(0.0, 5.0, size=base.shape)
        y, x = (3 * t) % max(1, height - 12), (5 * t) % max(1, width - 12)
        frame[y : y + 12, x : x + 12] = (230, 40, 20)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def make_params(height: int, width: int, size: int = 48, **overrides: object) -> AugmentParams:
    values: dict[str, object] = dict(
        crop_left_pixels=0, crop_top_pixels=0, crop_width_pixels=width, crop_height_pixels=height,
        output_size_pixels=size, flip=False, color_jitter=None, grayscale=False, blur_sigma_source_pixels=None,
    )
    values.update(overrides)
    return AugmentParams(**values)


def jitter(brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0, hue: float = 0.0,
           order: list[str] | None = None) -> ColorJitterParams:
    return ColorJitterParams(brightness_factor=brightness, contrast_factor=contrast, saturation_factor=saturation,
                             hue_shift_turns=hue, order=order or ALL_OPS)


def assert_parity(fast: np.ndarray, ref: np.ndarray) -> None:
    assert fast.shape == ref.shape and fast.dtype == ref.dtype == np.uint8
    diff = np.abs(fast.astype(np.int16) - ref.astype(np.int16))
    assert diff.mean() <= AUGMENT_PARITY_TOLERANCE, f"mean abs diff {diff.mean():.3f}"
    assert diff.max() <= AUGMENT_PARITY_MAX_ABS_TOLERANCE, f"max abs diff {diff.max()}"


def test_output_shape_dtype_layout() -> None:
    region = natural_region(5, 40, 30, seed=1)
    out = augment_clip(region, make_params(40, 30, size=24))
    assert out.shape == (3, 5, 24, 24) and out.dtype == np.uint8 and out.flags.c_contiguous
    # channel layout: red square stays red in channel 0
    plain = augment_clip(region, make_params(40, 30, size=40))
    assert plain[0].mean() != pytest.approx(plain[2].mean(), abs=1.0)


def test_identity_params_are_a_plain_bilinear_resize() -> None:
    region = natural_region(4, 50, 70, seed=2)
    out = augment_clip(region, make_params(50, 70, size=32))
    expected = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_LINEAR) for f in region]).transpose(3, 0, 1, 2)
    np.testing.assert_array_equal(out, expected)
    assert_parity(out, reference_augment_clip(region, make_params(50, 70, size=32)))
    same_size = natural_region(3, 32, 32, seed=3)
    np.testing.assert_array_equal(augment_clip(same_size, make_params(32, 32, size=32)), same_size.transpose(3, 0, 1, 2))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(dict(color_jitter=jitter(brightness=1.45)), id="brightness-up"),
        pytest.param(dict(color_jitter=jitter(brightness=0.5)), id="brightness-down"),
        pytest.param(dict(color_jitter=jitter(contrast=1.5)), id="contrast-up"),
        pytest.param(dict(color_jitter=jitter(contrast=0.45)), id="contrast-down"),
        pytest.param(dict(color_jitter=jitter(saturation=1.6)), id="saturation-up"),
        pytest.param(dict(color_jitter=jitter(saturation=0.4)), id="saturation-down"),
        pytest.param(dict(color_jitter=jitter(hue=0.15)), id="hue-plus"),
        pytest.param(dict(color_jitter=jitter(hue=-0.15)), id="hue-minus"),
        pytest.param(dict(color_jitter=jitter(hue=0.5)), id="hue-half-turn"),
        pytest.param(dict(grayscale=True), id="grayscale"),
        pytest.param(dict(blur_sigma_source_pixels=0.1), id="blur-small"),
        pytest.param(dict(blur_sigma_source_pixels=2.0), id="blur-large"),
        pytest.param(dict(flip=True), id="flip"),
        pytest.param(dict(color_jitter=jitter(1.3, 0.6, 1.5, 0.1, ["hue", "saturation", "brightness", "contrast"]),
                          grayscale=False, blur_sigma_source_pixels=1.2, flip=True), id="all"),
    ],
)
def test_each_op_matches_the_reference(overrides: dict[str, object]) -> None:
    region = natural_region(4, 60, 45, seed=4)
    params = make_params(60, 45, size=56, **overrides)
    assert_parity(augment_clip(region, params), reference_augment_clip(region, params))


def test_random_draws_match_the_reference() -> None:
    rng = np.random.default_rng(5)
    config = AugmentConfig(crop_size_pixels=64, color_jitter_probability=0.9, blur_probability=0.6)
    for k in range(12):
        source = natural_region(3, 120, 160, seed=10 + k)
        params = draw_augment_params(rng, 160, 120, config)
        top, left = params.crop_top_pixels, params.crop_left_pixels
        region = source[:, top : top + params.crop_height_pixels, left : left + params.crop_width_pixels]
        assert_parity(augment_clip(region, params), reference_augment_clip(region, params))


def test_blur_after_resize_approximates_blur_at_source() -> None:
    """The commutation the fast path relies on: blurring after the resize with σ scaled to output
    pixels is close to the paper's blur at source resolution before the resize."""
    region = natural_region(3, 90, 120, seed=6)
    for sigma in (0.5, 1.0, 2.0):
        params = make_params(90, 120, size=64, blur_sigma_source_pixels=sigma)
        diff = np.abs(augment_clip(region, params).astype(np.int16) - reference_augment_clip(region, params, blur_at_source=True))
        assert diff.mean() <= 1.5, (sigma, diff.mean())
    # and blurring does something
    blurred = augment_clip(region, make_params(90, 120, size=64, blur_sigma_source_pixels=2.0)).astype(np.int16)
    plain = augment_clip(region, make_params(90, 120, size=64)).astype(np.int16)
    assert np.abs(blurred - plain).mean() > 1.0


def test_blur_sigma_is_scaled_per_axis_to_output_pixels() -> None:
    params = make_params(100, 50, size=200, blur_sigma_source_pixels=1.5)
    assert output_blur_sigma_pixels(params, 100, 50) == pytest.approx((1.5 * 200 / 50, 1.5 * 200 / 100))
    assert output_blur_sigma_pixels(make_params(100, 50), 100, 50) is None


def test_same_params_on_all_frames_of_a_clip() -> None:
    """A clip of identical frames yields identical output frames under a full random draw."""
    frame = natural_region(1, 70, 90, seed=7)[0]
    region = np.repeat(frame[None], 6, axis=0)
    params = make_params(70, 90, size=48, color_jitter=jitter(1.2, 0.7, 1.4, -0.12, ["saturation", "hue", "contrast", "brightness"]),
                         blur_sigma_source_pixels=1.3, flip=True)
    out = augment_clip(region, params)
    for t in range(1, 6):
        np.testing.assert_array_equal(out[:, t], out[:, 0])
    # the per-frame result equals augmenting that frame alone (T = 1): nothing depends on T
    np.testing.assert_array_equal(augment_clip(region[:1], params)[:, 0], out[:, 0])


def test_contrast_uses_the_clip_mean_not_per_frame_means() -> None:
    dark = np.full((1, 8, 8, 3), 40, dtype=np.uint8)
    bright = np.full((1, 8, 8, 3), 200, dtype=np.uint8)
    region = np.concatenate([dark, bright])
    out = augment_clip(region, make_params(8, 8, size=8, color_jitter=jitter(contrast=0.0)))
    assert np.all(out == 120)  # every pixel becomes the clip's mean gray (40 + 200) / 2


def test_independent_params_give_different_outputs() -> None:
    """Clips of one plan draw their own params; the same frames under different draws differ."""
    region = natural_region(4, 80, 80, seed=8)
    rng = np.random.default_rng(9)
    config = AugmentConfig(crop_size_pixels=32)
    draws = [draw_augment_params(rng, 80, 80, config) for _ in range(6)]
    assert len({d.model_dump_json() for d in draws}) == 6
    outputs = []
    for d in draws:
        full = d.model_copy(update=dict(crop_left_pixels=0, crop_top_pixels=0, crop_width_pixels=80, crop_height_pixels=80))
        outputs.append(augment_clip(region, full))
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not np.array_equal(outputs[i], outputs[j]), (i, j)
    # and the same draw is deterministic
    np.testing.assert_array_equal(augment_clip(region, draws[0].model_copy(update=dict(crop_left_pixels=0, crop_top_pixels=0, crop_width_pixels=80, crop_height_pixels=80))), outputs[0])


def test_flip_is_an_exact_mirror() -> None:
    region = natural_region(3, 40, 50, seed=11)
    base = dict(color_jitter=jitter(1.1, 0.9, 1.2, 0.05), blur_sigma_source_pixels=0.8)
    plain = augment_clip(region, make_params(40, 50, size=30, **base))
    flipped = augment_clip(region, make_params(40, 50, size=30, flip=True, **base))
    np.testing.assert_array_equal(flipped, plain[..., ::-1])


def test_grayscale_has_three_equal_channels() -> None:
    region = natural_region(3, 40, 50, seed=12)
    out = augment_clip(region, make_params(40, 50, size=30, grayscale=True, color_jitter=jitter(1.2, 1.1, 1.5, 0.2)))
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[1], out[2])


def test_known_values() -> None:
    red = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    green = augment_clip(red, make_params(4, 4, size=4, color_jitter=jitter(hue=1 / 3)))
    assert np.all(green[1] == 255) and np.all(green[0] == 0) and np.all(green[2] == 0)
    ramp = np.arange(0, 256, 4, dtype=np.uint8).reshape(1, 8, 8, 1).repeat(3, axis=3)
    half = augment_clip(ramp, make_params(8, 8, size=8, color_jitter=jitter(brightness=0.5)))
    np.testing.assert_array_equal(half[0, 0], np.rint(ramp[0, ..., 0] * 0.5).astype(np.uint8))
    doubled = augment_clip(ramp, make_params(8, 8, size=8, color_jitter=jitter(brightness=2.0)))
    np.testing.assert_array_equal(doubled[0, 0], np.clip(ramp[0, ..., 0].astype(int) * 2, 0, 255))


def test_non_contiguous_region_view() -> None:
    frames = natural_region(3, 60, 80, seed=13)
    view = frames[:, 10:50, 5:65]  # a crop box view, as an executor may pass it
    params = make_params(40, 60, size=24, color_jitter=jitter(1.1, 1.2, 0.8, 0.1), blur_sigma_source_pixels=1.0)
    np.testing.assert_array_equal(augment_clip(view, params), augment_clip(np.ascontiguousarray(view), params))
    np.testing.assert_array_equal(frames, natural_region(3, 60, 80, seed=13))  # input untouched


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 8, 8, 3), dtype=np.float32), np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((2, 8, 8, 4), dtype=np.uint8),
     np.zeros((0, 8, 8, 3), dtype=np.uint8)],
    ids=["float", "3d", "4-channels", "empty"],
)
def test_bad_region_is_a_clear_error(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="region must be"):
        augment_clip(bad, make_params(8, 8))


@pytest.mark.parametrize("order", [["brightness", "contrast", "saturation", "hue"], ["saturation", "brightness", "hue", "contrast"],
                                   ["contrast", "saturation", "brightness", "hue"]])
def test_composed_ops_clamp_like_the_reference(order: list[str]) -> None:
    """Affine ops are composed into one pass, but an op with factor > 1 that saturates pixels is
    clamped before the next op, as the reference clamps after every op."""
    region = np.clip(natural_region(3, 40, 40, seed=14).astype(np.int16) + 90, 0, 255).astype(np.uint8)  # bright
    params = make_params(40, 40, size=40, color_jitter=jitter(1.6, 0.4, 1.6, 0.1, order))
    out = augment_clip(region, params)
    assert_parity(out, reference_augment_clip(region, params))
    # without the clamp after brightness 1.6 the result would differ a lot where pixels saturate
    if order[:2] == ["brightness", "contrast"]:
        tall = region.reshape(-1, 40, 3).astype(np.float64) * 1.6
        unclamped_mean = float((tall @ np.array([0.299, 0.587, 0.114])).mean())
        clamped_mean = float((np.minimum(tall, 255) @ np.array([0.299, 0.587, 0.114])).mean())
        assert unclamped_mean - clamped_mean > 5  # the test input does saturate
