"""Benchmark: the DALI executor (NVDEC on a GPU, or DALI's CPU backend on VP9) against the PyAV executor
on all CPU cores, plus the decode ceiling (DALI decoding every frame with concurrent decoders).

Workload (the plans issue): ρ=4 clips of T=8 frames, stride τ=8, 224×224 "aug+" augmentation, K400-like
videos of 10 s at 30 fps with a keyframe every 250 frames, at 340×256 and 640×360. The videos are
generated here with PyAV (H.264 with B-frames on a GPU machine; VP9 on a CPU-only machine, the only
family DALI's CPU decoder takes).

Figures per size:
- ``dali``: clips/s, plan frames/s (ρ·T per video), decoded frames/s (estimated from the keyframe
  layout: what a forward decoder must decode for the sorted frames of each plan), CPU cores busy
  (process user+sys time / wall time; DALI's threads included), GPU memory (device-wide used bytes).
- ``pyav``: the PyAV executor in a pool of ``--pyav-workers`` processes (default: every core).
- ``ceiling``: DALI decoding every frame of the same files, ``--ceiling-decoders`` pipelines in
  parallel threads (7 = the H100's NVDEC engines), frames/s.

Writes ``<out>/gpu_bench.json`` (``--out``, default ``$OUT`` or /tmp/clipserve-gpu-bench) and prints
the JSON and a one-line summary. Modes: ``--mode auto`` (GPU when CUDA and DALI are usable),
``--mode gpu``, ``--mode cpu`` (``--cpu-only``).

    python benchmarks/gpu_bench.py [--cpu-only] [--videos 16] [--seconds 10] [--sizes 340x256,640x360]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLING_KW = dict(num_clips=4, frames_per_clip=8, frame_stride=8)
KEYFRAME_INTERVAL_FRAMES = 250
FPS = 30


# ----------------------------------------------------------------------------------------- videos


def _k400_like_frames(n: int, width: int, height: int, seed: int):
    """Smooth moving colour fields, a moving block and sensor-like noise (a realistic bitrate)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    sx, sy = width / 40.0, height / 30.0
    for t in range(n):
        img = np.stack(
            [
                127 + 100 * np.sin(x / sx + t * 0.05 + phase[0]) * np.cos(y / sy),
                127 + 100 * np.sin(y / sy - t * 0.04 + phase[1]),
                127 + 100 * np.cos((x + y) / (sx + sy) + t * 0.03 + phase[2]),
            ],
            -1,
        )
        top = int((t * 2) % max(1, height - height // 4))
        left = int((t * 3) % max(1, width - width // 5))
        img[top : top + height // 4, left : left + width // 5] = (220, 60, 40)
        img += rng.normal(0, 4, img.shape).astype(np.float32)
        yield np.clip(img, 0, 255).astype(np.uint8)


def _make_video(args: tuple[str, str, int, int, int, int]) -> str:
    from clipserve.media.encode import encode_video

    path, codec, width, height, frames, seed = args
    if not Path(path).exists():
        tmp = Path(path).with_name("tmp-" + Path(path).name)
        encode_video(tmp, _k400_like_frames(frames, width, height, seed), fps=FPS, codec=codec,
                     keyframe_interval_frames=KEYFRAME_INTERVAL_FRAMES)
        tmp.rename(path)
    return path


def make_videos(root: Path, codec: str, sizes: list[tuple[int, int]], count: int, seconds: float, workers: int) -> dict[str, list[Path]]:
    suffix = ".webm" if codec == "vp9" else ".mp4"
    jobs, by_size = [], {}
    for width, height in sizes:
        folder = root / f"{codec}_{width}x{height}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"v{i:03d}{suffix}" for i in range(count)]
        by_size[f"{width}x{height}"] = paths
        jobs += [(str(p), codec, width, height, int(seconds * FPS), 1000 * width + i) for i, p in enumerate(paths)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_make_video, jobs))
    return by_size


def probe_record(path: Path, video_index: int):
    """A ``VideoRecord`` from a demux scan (packet count, keyframes), no decoding."""
    import av

    from clipserve.datasets.record import VideoRecord

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts, keys = [], []
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        codec = stream.codec_context.name
        width, height, pix = stream.codec_context.width, stream.codec_context.height, stream.codec_context.pix_fmt
    pts.sort()
    keyframe_indices = [pts.index(k) for k in keys]
    return VideoRecord(
        relative_path=path.name, label_name="bench", label_id=0, size_bytes=path.stat().st_size, mtime_ns=0,
        status="ok", codec=codec, pixel_format=pix or "", width_pixels=width, height_pixels=height,
        num_frames=len(pts), average_fps=float(FPS), duration_seconds=len(pts) / FPS, keyframe_indices=keyframe_indices,
    )


def decoded_frames_estimate(frame_indices: list[int], keyframe_indices: list[int]) -> int:
    """Frames a forward decoder decodes for these indices: from the keyframe at or before the first
    sorted index onwards, re-starting at a later keyframe when the next index lies past it."""
    keys = sorted(set(keyframe_indices)) or [0]
    total, position = 0, None
    for index in sorted(set(frame_indices)):
        start = max([k for k in keys if k <= index], default=0)
        if position is None or start > position:
            total += index - start + 1
        else:
            total += index - position
        position = index
    return total


# ----------------------------------------------------------------------------------------- runs


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def gpu_memory_used_bytes() -> int | None:
    try:
        import torch

        free, total = torch.cuda.mem_get_info()
        return int(total - free)
    except Exception:
        return None


def run_dali(device: str, paths: list[Path], records: list[Any], batch_size: int, num_threads: int, passes: int) -> dict[str, Any]:
    from clipserve.config import AugmentConfig, SamplingConfig
    from clipserve.executors.dali import DaliExecutor
    from clipserve.plan import plan

    sampling = SamplingConfig(**SAMPLING_KW)
    augment = AugmentConfig()
    executor = DaliExecutor(device, batch_size=batch_size, num_threads=num_threads)
    memory_before = gpu_memory_used_bytes() if device == "gpu" else None

    def sync() -> None:
        if device == "gpu":
            import torch

            torch.cuda.synchronize()

    def batches(epoch: int):
        plans = [plan(r, epoch, i, 0, sampling, augment) for i, r in enumerate(records)]
        for start in range(0, len(paths), batch_size):
            yield paths[start : start + batch_size], plans[start : start + batch_size]

    for batch_paths, batch_plans in batches(0):  # warm-up: pipeline build, first allocations
        executor.execute_batch(batch_paths, batch_plans)
        break
    sync()
    videos = decoded = failures = 0
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    for epoch in range(1, passes + 1):
        for batch_paths, batch_plans in batches(epoch):
            clips, failed = executor.execute_batch(batch_paths, batch_plans)
            failures += len(failed)
            videos += len(batch_plans) - len(failed)
            decoded += sum(decoded_frames_estimate(p.all_frame_indices, r.keyframe_indices)
                           for p, r in zip(batch_plans, [records[paths.index(x)] for x in batch_paths]))
            del clips
    sync()
    wall = time.perf_counter() - wall0
    cpu = _cpu_seconds() - cpu0
    memory_after = gpu_memory_used_bytes() if device == "gpu" else None
    per_video = SAMPLING_KW["num_clips"] * SAMPLING_KW["frames_per_clip"]
    return {
        "backend": f"dali-{device}",
        "batch_size": batch_size,
        "num_threads": num_threads,
        "videos": videos,
        "failures": failures,
        "wall_seconds": round(wall, 3),
        "videos_per_second": round(videos / wall, 2),
        "clips_per_second": round(videos * SAMPLING_KW["num_clips"] / wall, 2),
        "plan_frames_per_second": round(videos * per_video / wall, 1),
        "decoded_frames_per_second_estimate": round(decoded / wall, 1),
        "cpu_cores_busy": round(cpu / wall, 2),
        "cpu_seconds_per_clip": round(cpu / max(1, videos * SAMPLING_KW["num_clips"]), 4),
        "gpu_memory_used_bytes": memory_after,
        "gpu_memory_used_by_executor_bytes": (memory_after - memory_before) if memory_after is not None and memory_before is not None else None,
    }


def _pyav_worker_init() -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass


def _pyav_one(job: tuple[str, str]) -> int:
    from clipserve.executors.pyav import execute_plan
    from clipserve.plan_models import ClipPlan

    path, plan_json = job
    try:
        execute_plan(path, ClipPlan.model_validate_json(plan_json))
    except Exception:
        return 0
    return 1


def run_pyav(paths: list[Path], records: list[Any], workers: int, passes: int) -> dict[str, Any]:
    from clipserve.config import AugmentConfig, SamplingConfig
    from clipserve.plan import plan

    sampling = SamplingConfig(**SAMPLING_KW)
    augment = AugmentConfig()
    jobs = [(str(p), plan(r, epoch, i, 0, sampling, augment).model_dump_json())
            for epoch in range(1, passes + 1) for i, (p, r) in enumerate(zip(paths, records))]
    decoded = sum(decoded_frames_estimate(
        [i for c in json.loads(j)["clips"] for i in c["frame_indices"]], records[paths.index(Path(p))].keyframe_indices) for p, j in jobs)
    children0 = _cpu_seconds(resource.RUSAGE_CHILDREN)
    self0 = _cpu_seconds()
    with ProcessPoolExecutor(max_workers=workers, initializer=_pyav_worker_init) as pool:
        list(pool.map(_pyav_one, jobs[:workers]))  # warm-up: imports in every worker
        wall0 = time.perf_counter()
        ok = sum(pool.map(_pyav_one, jobs, chunksize=1))
        wall = time.perf_counter() - wall0
    cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - children0 + _cpu_seconds() - self0  # includes the warm-up
    per_video = SAMPLING_KW["num_clips"] * SAMPLING_KW["frames_per_clip"]
    return {
        "backend": "pyav",
        "workers": workers,
        "videos": ok,
        "failures": len(jobs) - ok,
        "wall_seconds": round(wall, 3),
        "videos_per_second": round(ok / wall, 2),
        "clips_per_second": round(ok * SAMPLING_KW["num_clips"] / wall, 2),
        "plan_frames_per_second": round(ok * per_video / wall, 1),
        "decoded_frames_per_second_estimate": round(decoded / wall, 1),
        "cpu_cores_busy_upper_bound": round(cpu / wall, 2),
        "cpu_seconds_per_clip_upper_bound": round(cpu / max(1, ok * SAMPLING_KW["num_clips"]), 4),
        "note": "CPU time includes the workers' warm-up (one plan each)",
    }


def run_ceiling(device: str, paths: list[Path], records: list[Any], decoders: int) -> dict[str, Any]:
    """DALI decoding every frame of every file, ``decoders`` pipelines in parallel threads."""
    from clipserve.executors.dali import DaliExecutor

    executors = [DaliExecutor(device, batch_size=1, num_threads=1) for _ in range(decoders)]
    counts = [0] * decoders
    errors: list[str] = []

    def worker(k: int) -> None:
        for j in range(k, len(paths), decoders):
            try:
                frames = executors[k].decode_frames(paths[j], list(range(records[j].num_frames)))
                counts[k] += len(frames)
            except Exception as exc:  # report, keep measuring
                errors.append(f"{paths[j].name}: {exc}")

    executors[0].decode_frames(paths[0], [0])  # warm-up
    for k in range(1, decoders):
        executors[k].decode_frames(paths[0], [0])
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(decoders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall0
    return {
        "backend": f"dali-{device} full decode",
        "concurrent_decoders": decoders,
        "frames": sum(counts),
        "wall_seconds": round(wall, 3),
        "frames_per_second": round(sum(counts) / wall, 1),
        "cpu_cores_busy": round((_cpu_seconds() - cpu0) / wall, 2),
        "note": "includes the copy of every frame to host memory (decode_frames returns NumPy)",
        "errors": errors[:5],
    }


def _nvidia_smi() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    except Exception:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["auto", "gpu", "cpu"], default="auto")
    parser.add_argument("--cpu-only", action="store_true", help="same as --mode cpu")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/clipserve-gpu-bench"))
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "clipserve-gpu-bench-videos")
    parser.add_argument("--videos", type=int, default=None, help="videos per size (default: 32 GPU, 4 CPU)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per video (default: 10 GPU, 4 CPU)")
    parser.add_argument("--sizes", default=None, help="WxH list (default: 340x256,640x360 GPU; 340x256 CPU)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dali-threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=None, help="epochs of plans over the videos (default: 3 GPU, 1 CPU)")
    parser.add_argument("--pyav-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ceiling-decoders", type=int, default=None, help="default: 7 on GPU (H100 NVDEC engines), 2 on CPU")
    args = parser.parse_args()

    from clipserve.executors.backend import cuda_usable

    mode = "cpu" if args.cpu_only else args.mode
    if mode == "auto":
        mode = "gpu" if cuda_usable() else "cpu"
    if mode == "gpu" and not cuda_usable():
        print("no usable CUDA device (torch.cuda + DALI): run with --cpu-only", file=sys.stderr)
        return 2
    gpu = mode == "gpu"
    count = args.videos or (32 if gpu else 4)
    seconds = args.seconds or (10.0 if gpu else 4.0)
    sizes = [tuple(int(v) for v in s.split("x")) for s in (args.sizes or ("340x256,640x360" if gpu else "340x256")).split(",")]
    passes = args.passes or (3 if gpu else 1)
    decoders = args.ceiling_decoders or (7 if gpu else 2)
    codec = "h264" if gpu else "vp9"
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    videos = make_videos(args.work, codec, sizes, count, seconds, workers=os.cpu_count() or 1)
    result: dict[str, Any] = {
        "benchmark": "dali_vs_pyav",
        "mode": mode,
        "device": _nvidia_smi() if gpu else f"CPU only ({os.cpu_count()} cores)",
        "host": platform.node(),
        "python": platform.python_version(),
        "codec": codec,
        "workload": {**SAMPLING_KW, "crop_size_pixels": 224, "augment": "aug+ defaults", "videos_per_size": count,
                     "seconds_per_video": seconds, "fps": FPS, "keyframe_interval_frames": KEYFRAME_INTERVAL_FRAMES, "passes": passes},
        "video_generation_seconds": round(time.perf_counter() - started, 1),
        "sizes": {},
    }
    for size, paths in videos.items():
        records = [probe_record(p, i) for i, p in enumerate(paths)]
        entry: dict[str, Any] = {}
        for name, fn_ in [
            ("dali", lambda: run_dali(mode, paths, records, args.batch_size, args.dali_threads, passes)),
            ("pyav", lambda: run_pyav(paths, records, args.pyav_workers, passes)),
            ("ceiling", lambda: run_ceiling(mode, paths, records, decoders)),
        ]:
            try:
                entry[name] = fn_()
            except Exception as exc:
                entry[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"[{size}] {name}: {json.dumps(entry[name])}", flush=True)
        dali, pyav, ceiling = entry["dali"], entry["pyav"], entry["ceiling"]
        if "error" not in dali and "error" not in ceiling:
            entry["dali_decoded_vs_ceiling"] = round(dali["decoded_frames_per_second_estimate"] / ceiling["frames_per_second"], 3)
        if "error" not in dali and "error" not in pyav:
            entry["dali_over_pyav_clips"] = round(dali["clips_per_second"] / pyav["clips_per_second"], 3)
        result["sizes"][size] = entry
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "gpu_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    parts = []
    for size, e in result["sizes"].items():
        parts.append(
            f"{size}: dali-{mode} {e['dali'].get('clips_per_second', 'err')} clips/s "
            f"({e['dali'].get('cpu_cores_busy', '?')} cores) vs pyav×{args.pyav_workers} {e['pyav'].get('clips_per_second', 'err')} clips/s; "
            f"decoded {e['dali'].get('decoded_frames_per_second_estimate', '?')} f/s = {e.get('dali_decoded_vs_ceiling', '?')} of "
            f"ceiling {e['ceiling'].get('frames_per_second', 'err')} f/s"
        )
    print("SUMMARY " + " | ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
