"""Benchmark: CPU augmentation of one clip (T frames of a crop box → (C, T, S, S) uint8), one thread.

Compares, on the same regions and parameter draws:
  - ``opencv``: ``clipserve.executors.augment.augment_clip`` (OpenCV on uint8; what clipserve uses);
  - ``torchvision_uint8``: torchvision.transforms.v2 functional ops on a (T, C, H, W) uint8 tensor;
  - ``torchvision_float``: ``reference_augment_clip`` (torchvision v2 on float32, the parity reference).
Workloads: ``full`` (every op on: jitter in all four ops, blur, flip) and ``aug_plus`` (draws with the
paper's "aug+" probabilities). Prints one JSON object and a one-line summary.

    .venv/bin/python benchmarks/augment.py [--frames 8] [--region 200] [--size 224] [--repeats 30]
        [--baseline OLD_AUGMENT_PY]

Times are CPU seconds of this process (``time.process_time``, one thread), best of 3 rounds; the
methods are interleaved within each round, so a loaded, shared machine slows them alike.
``--baseline`` loads another version of ``clipserve/executors/augment.py`` (e.g. a copy saved before
a change) and times its ``augment_clip`` as ``baseline`` beside the current one (before/after).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from clipserve.config import AugmentConfig
from clipserve.executors.augment import augment_clip, output_blur_sigma_pixels, blur_kernel_size_pixels, reference_augment_clip
from clipserve.plan_models import AugmentParams, ColorJitterParams


def _regions(count: int, frames: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    regions = []
    for _ in range(count):
        low = rng.integers(0, 256, size=(12, 12, 3)).astype(np.float32)
        base = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        clip = np.clip(base[None] + rng.normal(0, 6, size=(frames, size, size, 3)), 0, 255).astype(np.uint8)
        regions.append(clip)
    return regions


def _draw(rng: np.random.Generator, cfg: AugmentConfig, h: int, w: int, full: bool) -> AugmentParams:
    b, c, s, hue = cfg.color_jitter_strength
    jitter = None
    if full or rng.random() < cfg.color_jitter_probability:
        jitter = ColorJitterParams(
            brightness_factor=float(rng.uniform(1 - b, 1 + b)),
            contrast_factor=float(rng.uniform(1 - c, 1 + c)),
            saturation_factor=float(rng.uniform(1 - s, 1 + s)),
            hue_shift_turns=float(rng.uniform(-hue, hue)),
            order=[str(o) for o in rng.permutation(["brightness", "contrast", "saturation", "hue"])],
        )
    blur = None
    if full or rng.random() < cfg.blur_probability:
        blur = float(rng.uniform(*cfg.blur_sigma_range))
    return AugmentParams(
        crop_left_pixels=0, crop_top_pixels=0, crop_width_pixels=w, crop_height_pixels=h,
        output_size_pixels=cfg.crop_size_pixels,
        flip=bool(full or rng.random() < cfg.flip_probability),
        color_jitter=jitter,
        grayscale=bool((not full) and rng.random() < cfg.grayscale_probability),
        blur_sigma_source_pixels=blur,
    )


def torchvision_uint8(region: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Same pipeline with torchvision v2 ops on a (T, C, H, W) uint8 tensor (clip-wide contrast mean)."""
    t, h, w, _ = region.shape
    s = params.output_size_pixels
    x = torch.from_numpy(region).permute(0, 3, 1, 2)
    x = F.resize(x, [s, s], interpolation=F.InterpolationMode.BILINEAR, antialias=False)
    j = params.color_jitter
    if j is not None:
        for op in j.order:
            if op == "brightness":
                x = F.adjust_brightness(x, j.brightness_factor)
            elif op == "contrast":
                tall = x.permute(1, 0, 2, 3).reshape(3, t * s, s)
                x = F.adjust_contrast(tall, j.contrast_factor).reshape(3, t, s, s).permute(1, 0, 2, 3)
            elif op == "saturation":
                x = F.adjust_saturation(x, j.saturation_factor)
            elif op == "hue":
                x = F.adjust_hue(x, j.hue_shift_turns)
    if params.grayscale:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    sigmas = output_blur_sigma_pixels(params, h, w)
    if sigmas is not None:
        x = F.gaussian_blur(x, [blur_kernel_size_pixels(sigmas[0], s), blur_kernel_size_pixels(sigmas[1], s)], list(sigmas))
    if params.flip:
        x = F.horizontal_flip(x)
    return x.permute(1, 0, 2, 3).contiguous().numpy()


def _time_interleaved(methods: dict, regions: list[np.ndarray], params: list[AugmentParams], repeats: int) -> dict[str, float]:
    """Best-of-3 CPU seconds per clip for each method, methods interleaved clip by clip."""
    for fn in methods.values():
        fn(regions[0], params[0])  # warm-up
    best = {name: float("inf") for name in methods}
    for _ in range(3):
        spent = {name: 0.0 for name in methods}
        for k in range(repeats):
            region, p = regions[k % len(regions)], params[k % len(params)]
            for name, fn in methods.items():
                started = time.process_time()
                fn(region, p)
                spent[name] += time.process_time() - started
        for name in methods:
            best[name] = min(best[name], spent[name] / repeats)
    return best


def _load_baseline(path: str):
    spec = importlib.util.spec_from_file_location("augment_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.augment_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="T, frames per clip")
    parser.add_argument("--region", type=int, default=200, help="crop box side in source pixels")
    parser.add_argument("--size", type=int, default=224, help="output side S in pixels")
    parser.add_argument("--repeats", type=int, default=30, help="clips per timing run (best of 3 runs)")
    parser.add_argument("--baseline", help="another augment.py whose augment_clip is timed as 'baseline' (before/after)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(crop_size_pixels=args.size)
    regions = _regions(4, args.frames, args.region, rng)
    methods = {"opencv": augment_clip, "torchvision_uint8": torchvision_uint8, "torchvision_float": reference_augment_clip}
    if args.baseline:
        methods["baseline"] = _load_baseline(args.baseline)
    results: dict[str, dict[str, float]] = {}
    for workload in ("full", "aug_plus"):
        params = [_draw(rng, cfg, args.region, args.region, workload == "full") for _ in range(16)]
        results[workload] = {name: seconds * 1000.0 for name, seconds in _time_interleaved(methods, regions, params, args.repeats).items()}
        diffs = [np.abs(augment_clip(r, p).astype(np.int16) - reference_augment_clip(r, p).astype(np.int16)) for r, p in zip(regions * 4, params)]
        results[workload]["opencv_vs_reference_mean_abs"] = float(np.mean([d.mean() for d in diffs]))
        results[workload]["opencv_vs_reference_max_abs"] = float(max(d.max() for d in diffs))
        if args.baseline:
            diffs = [np.abs(methods["baseline"](r, p).astype(np.int16) - reference_augment_clip(r, p).astype(np.int16)) for r, p in zip(regions * 4, params)]
            results[workload]["opencv_vs_reference_baseline_mean_abs"] = float(np.mean([d.mean() for d in diffs]))
            results[workload]["opencv_vs_reference_baseline_max_abs"] = float(max(d.max() for d in diffs))
    report = {
        "benchmark": "augment",
        "frames": args.frames, "region_pixels": args.region, "output_pixels": args.size, "threads": 1,
        "timing": "CPU seconds (process_time), best of 3 interleaved rounds",
        "machine": platform.processor() or platform.machine(),
        "milliseconds_per_clip": {w: {k: round(v, 3) for k, v in r.items() if not k.startswith("opencv_vs")} for w, r in results.items()},
        "parity": {w: {k: round(v, 3) for k, v in r.items() if k.startswith("opencv_vs")} for w, r in results.items()},
    }
    print(json.dumps(report, indent=2))
    full, aug = results["full"], results["aug_plus"]
    if args.baseline:
        print(f"baseline {full['baseline']:.2f} ms/clip full, {aug['baseline']:.2f} aug+ -> opencv now "
              f"{full['baseline'] / full['opencv']:.2f}x/{aug['baseline'] / aug['opencv']:.2f}x faster")
    print(
        f"augment {args.frames}x{args.region}²→{args.size}²: opencv {full['opencv']:.2f} ms/clip full, {aug['opencv']:.2f} aug+; "
        f"torchvision uint8 {full['torchvision_uint8']:.2f}/{aug['torchvision_uint8']:.2f} "
        f"({full['torchvision_uint8'] / full['opencv']:.1f}x/{aug['torchvision_uint8'] / aug['opencv']:.1f}x slower); "
        f"torchvision float {full['torchvision_float']:.2f}/{aug['torchvision_float']:.2f} "
        f"({full['torchvision_float'] / full['opencv']:.1f}x/{aug['torchvision_float'] / aug['opencv']:.1f}x slower)"
    )


if __name__ == "__main__":
    main()
