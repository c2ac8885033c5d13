"""CPU executor benchmark: clipserve's PyAV executor against its peers, all on the same videos and plans.

Workload (issue 3): ρ=4 clips of T=8 frames, stride 8, 224² output with the "aug+" augmentation,
on a generated Kinetics-400-like set (40 videos, 340×256, 30 fps, 10 s, x264 veryfast crf 23 with
B-frames), keyframe interval 250 and a keyframe-interval-30 variant. Methods:

- ``clipserve``: ``clipserve.executors.pyav.execute_plan`` (decode once, skip unneeded non-reference
  frames, crop before RGB conversion, ``augment_clip``).
- ``naive``: per clip, seek to the keyframe before the clip and decode forward to its last frame
  (PyTorchVideo's and PySlowFast's PyAV path), swscale ``to_ndarray("rgb24")`` of the T needed
  frames only (those libraries convert every frame of the span, so this peer is generous), crop,
  ``augment_clip``.
- ``torchcodec``: ``VideoDecoder(seek_mode="exact", num_ffmpeg_threads=1).get_frames_at(ρ·T indices)``,
  crop, ``augment_clip``. Runs in its own interpreter: a throwaway venv (``--torchcodec-venv``,
  created on first use) that sees the project's site-packages through a ``.pth`` file, so torch is
  never reinstalled; torchcodec itself needs FFmpeg's shared libraries (Debian: ``apt-get install
  ffmpeg``). Skipped, with the reason printed, when it cannot load.
- ``decode_all``: PyAV full decode of every frame, no RGB conversion: the decode-everything bound,
  in videos/s. ``ffmpeg_null`` (``ffmpeg -threads 1 -f null``) is added when Debian's ffmpeg exists.

Each method runs with 1 and 2 worker processes (one video per task, one decode thread each).
Prints one line per measurement, the ratios, a JSON document and a one-line summary.

    .venv/bin/python benchmarks/cpu_executor.py [--quick] [--data /tmp/clipserve-bench-cpu]
        [--torchcodec-venv /tmp/clipserve-torchcodec-venv | --no-torchcodec] [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WIDTH_PIXELS, HEIGHT_PIXELS, FPS, SECONDS = 340, 256, 30, 10
NUM_CLIPS, FRAMES_PER_CLIP, FRAME_STRIDE, CROP_SIZE_PIXELS = 4, 8, 8, 224
SEED = 0
KEYFRAME_INTERVALS = (250, 30)
METHODS = ("decode_all", "naive", "torchcodec", "clipserve")


# --- data -----------------------------------------------------------------------------------------


def k400_like_frames(num_frames: int, width: int, height: int, seed: int):
    """Camera pan over a detailed texture, moving blobs and sensor noise (about 0.3 Mb/s at 340×256 with
    x264 veryfast crf 23; a static test pattern would decode faster than camera footage)."""
    import cv2

    rng = np.random.default_rng(seed)
    big_h, big_w = height * 2, width * 2
    coarse = rng.normal(128, 60, size=(big_h // 16, big_w // 16, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
    texture += rng.normal(0, 25, size=(big_h, big_w, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(texture, (3, 3), 0.8)
    velocity = rng.uniform(-1.5, 1.5, size=2)
    blobs = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(15, 40), rng.integers(0, 255, 3)) for _ in range(3)]
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(num_frames):
        x0 = int((width / 2 + velocity[0] * i) % width)
        y0 = int((height / 2 + velocity[1] * i) % height)
        frame = texture[y0 : y0 + height, x0 : x0 + width].copy()
        for bx, by, vx, vy, radius, color in blobs:
            cx, cy = (bx + vx * i) % width, (by + vy * i) % height
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
            frame[mask] = color
        frame += rng.normal(0, 6, size=frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def ensure_dataset(data_dir: Path, keyframe_interval: int, num_videos: int) -> list[Path]:
    """The generated set for one keyframe interval (cached in ``data_dir``)."""
    from clipserve.media.encode import encode_video

    folder = data_dir / f"k400like_{WIDTH_PIXELS}x{HEIGHT_PIXELS}_{SECONDS}s_gop{keyframe_interval}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for v in range(num_videos):
        path = folder / f"video_{v:03d}.mp4"
        if not path.exists():
            partial = path.with_suffix(".partial.mp4")
            encode_video(partial, k400_like_frames(FPS * SECONDS, WIDTH_PIXELS, HEIGHT_PIXELS, seed=1000 + v),
                         fps=FPS, keyframe_interval_frames=keyframe_interval)
            partial.rename(path)
        paths.append(path)
    return paths


def make_plans(paths: list[Path]) -> list:
    """One plan per video (epoch 0), ρ=4, 8×8, 224² aug+: ``clipserve.plan.plan`` on probed records."""
    from clipserve.config import AugmentConfig, SamplingConfig
    from clipserve.datasets.record import VideoRecord
    from clipserve.plan import plan

    sampling = SamplingConfig(num_clips=NUM_CLIPS, frames_per_clip=FRAMES_PER_CLIP, frame_stride=FRAME_STRIDE, target_fps=FPS)
    augment = AugmentConfig(crop_size_pixels=CROP_SIZE_PIXELS)
    plans = []
    for v, path in enumerate(paths):
        num_frames = FPS * SECONDS
        record = VideoRecord(
            relative_path=path.name, label_name="x", label_id=0, size_bytes=path.stat().st_size, mtime_ns=0, status="ok",
            codec="h264", pixel_format="yuv420p", width_pixels=WIDTH_PIXELS, height_pixels=HEIGHT_PIXELS,
            num_frames=num_frames, average_fps=FPS, duration_seconds=SECONDS,
            frame_timestamps_seconds=[i / FPS for i in range(num_frames)],
        )
        plans.append(plan(record, epoch=0, video_index=v, seed=SEED, sampling=sampling, augment=augment))
    return plans


# --- methods: each turns (path, plan) into (ρ, C, T, S, S) uint8 (decode_all: a frame count) ------


def _crop(frames: np.ndarray, augment_params) -> np.ndarray:
    a = augment_params
    return np.ascontiguousarray(frames[:, a.crop_top_pixels : a.crop_top_pixels + a.crop_height_pixels, a.crop_left_pixels : a.crop_left_pixels + a.crop_width_pixels])


_AUGMENT = {"on": True}


def _augment(region: np.ndarray, params) -> np.ndarray:
    """The project's ``augment_clip`` (same for every method), or the region itself with --frames-only."""
    if not _AUGMENT["on"]:
        return region
    from clipserve.executors.augment import augment_clip

    return augment_clip(region, params)


def run_clipserve(path: Path, plan) -> int:
    from clipserve.executors.pyav import decode_clip_regions, execute_plan

    if not _AUGMENT["on"]:
        return len(decode_clip_regions(path, plan))
    return int(execute_plan(path, plan).shape[0])


def run_naive(path: Path, plan) -> int:
    """Per clip: seek to the keyframe before the clip start, decode forward to the clip's last frame."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frame_pts = sorted(p.pts for p in container.demux(stream) if p.size)  # index -> pts, as the others
        outputs = []
        for clip in plan.clips:
            wanted = {frame_pts[i]: None for i in clip.frame_indices}
            last = max(wanted)
            container.seek(frame_pts[clip.frame_indices[0]], stream=stream, backward=True, any_frame=False)
            stream.codec_context.flush_buffers()
            for frame in container.decode(stream):
                if frame.pts in wanted and wanted[frame.pts] is None:
                    wanted[frame.pts] = frame.to_ndarray(format="rgb24")
                if frame.pts >= last:
                    break
            frames = np.stack([wanted[frame_pts[i]] for i in clip.frame_indices])
            outputs.append(_augment(_crop(frames, clip.augment), clip.augment))
    return len(outputs)


def run_torchcodec(path: Path, plan) -> int:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    frames = decoder.get_frames_at(plan.all_frame_indices).data.numpy()  # (ρ·T, H, W, 3)
    outputs = []
    for c, clip in enumerate(plan.clips):
        outputs.append(_augment(_crop(frames[c * FRAMES_PER_CLIP : (c + 1) * FRAMES_PER_CLIP], clip.augment), clip.augment))
    return len(outputs)


def run_decode_all(path: Path, plan) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return sum(1 for _ in container.decode(stream))


RUNNERS = {"clipserve": run_clipserve, "naive": run_naive, "torchcodec": run_torchcodec, "decode_all": run_decode_all}


# --- measurement ---------------------------------------------------------------------------------


def _init_worker() -> None:
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _task(args: tuple[str, str, str, bool]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to run one method on one video."""
    method, path, plan_json, augment = args
    _AUGMENT["on"] = augment
    from clipserve.plan_models import ClipPlan

    plan = ClipPlan.model_validate_json(plan_json)
    started, cpu_started = time.perf_counter(), time.process_time()
    RUNNERS[method](Path(path), plan)
    return time.perf_counter() - started, time.process_time() - cpu_started


def measure(method: str, paths: list[Path], plans: list, processes: int, augment: bool = True) -> dict:
    """Wall time to run ``method`` on every video with ``processes`` worker processes (warm workers),
    and the CPU time the workers spent (the fairer figure on a machine shared with other jobs)."""
    tasks = [(method, str(p), plan.model_dump_json(), augment) for p, plan in zip(paths, plans)]
    with mp.get_context("spawn").Pool(processes, initializer=_init_worker) as pool:
        pool.map(_task, tasks[:processes], chunksize=1)  # warm-up: imports, first open
        started = time.perf_counter()
        per_video = pool.map(_task, tasks, chunksize=1)
        wall = time.perf_counter() - started
    num_videos = len(paths)
    cpu = sum(c for _, c in per_video)
    return {
        "method": method, "processes": processes, "videos": num_videos, "wall_seconds": round(wall, 3),
        "videos_per_second": round(num_videos / wall, 2), "clips_per_second": round(num_videos * NUM_CLIPS / wall, 2),
        "mean_video_ms": round(1000 * float(np.mean([w for w, _ in per_video])), 2),
        "cpu_seconds": round(cpu, 3), "videos_per_cpu_second": round(num_videos / cpu, 2),
        "clips_per_cpu_second": round(num_videos * NUM_CLIPS / cpu, 2),
    }


def measure_interleaved(methods: list[str], paths: list[Path], plans: list, augment: bool, repeats: int = 1) -> dict:
    """One process, video after video, every method on the same video back to back (rotating the
    order): CPU seconds per method. On a machine shared with other jobs this is the steadiest
    comparison, since load changes hit all methods alike."""
    _init_worker()
    _AUGMENT["on"] = augment
    for method in methods:  # warm-up: imports, first open
        RUNNERS[method](paths[0], plans[0])
    cpu = {m: 0.0 for m in methods}
    wall = {m: 0.0 for m in methods}
    for r in range(repeats):
        for v, (path, plan) in enumerate(zip(paths, plans)):
            shift = (v + r) % len(methods)
            for method in methods[shift:] + methods[:shift]:
                started, cpu_started = time.perf_counter(), time.process_time()
                RUNNERS[method](path, plan)
                cpu[method] += time.process_time() - cpu_started
                wall[method] += time.perf_counter() - started
    n = len(paths) * repeats
    return {m: {"cpu_seconds": round(cpu[m], 3), "wall_seconds": round(wall[m], 3), "videos_per_cpu_second": round(n / cpu[m], 2),
                "clips_per_cpu_second": round(n * NUM_CLIPS / cpu[m], 2)} for m in methods}


def measure_ffmpeg_null(paths: list[Path]) -> dict | None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    started = time.perf_counter()
    for path in paths:
        subprocess.run([ffmpeg, "-v", "error", "-threads", "1", "-i", str(path), "-f", "null", "-"], check=True)
    wall = time.perf_counter() - started
    return {"method": "ffmpeg_null", "processes": 1, "videos": len(paths), "wall_seconds": round(wall, 3),
            "videos_per_second": round(len(paths) / wall, 2), "clips_per_second": None}


def setup_torchcodec_venv(venv: Path) -> str:
    """Python of a throwaway venv with torchcodec that reuses this venv's packages (torch untouched).

    Raises RuntimeError with the reason when torchcodec cannot be installed or loaded.
    """
    import ctypes.util
    import site
    import sysconfig

    if ctypes.util.find_library("avcodec") is None:
        raise RuntimeError("torchcodec needs FFmpeg 4-8 shared libraries (Debian: apt-get install ffmpeg); none found")
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
        ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
        (target / "clipserve_parent_venv.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "torchcodec"], capture_output=True, text=True)
        if install.returncode != 0:
            raise RuntimeError(f"pip install torchcodec failed: {install.stderr.strip()[-300:]}")
    check = subprocess.run([str(python), "-c", "import torch, torchcodec.decoders; print(torch.__version__, torchcodec.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"torchcodec does not load with this torch: {check.stderr.strip()[-400:]}")
    print(f"# torchcodec venv {venv}: torch, torchcodec = {check.stdout.strip()}", flush=True)
    return str(python)


def _child_env() -> dict[str, str]:
    """The environment of a child benchmark interpreter: the repository first on PYTHONPATH, then
    whatever PYTHONPATH this run was given (e.g. a shim that swaps in another implementation to
    measure before/after)."""
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def torchcodec_in_other_python(python: str | None, data_dir: Path, keyframe_interval: int, num_videos: int, processes: int,
                               augment: bool) -> dict:
    """Run the torchcodec measurement in ``python`` (its own venv); a dict with 'skipped' says why not."""
    if not python:
        return {"method": "torchcodec", "processes": processes, "skipped": "torchcodec unavailable (see the '# torchcodec skipped' line)"}
    command = [python, str(Path(__file__).resolve()), "--child-torchcodec", "--data", str(data_dir), "--videos", str(num_videos),
               "--keyframe-interval", str(keyframe_interval), "--processes", str(processes)] + ([] if augment else ["--frames-only"])
    result = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=1800)
    if result.returncode != 0:
        return {"method": "torchcodec", "processes": processes, "skipped": f"torchcodec run failed: {result.stderr.strip()[-400:]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- main ------------------------------------------------------------------------------------------


def _has_torchcodec() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # noqa: BLE001 (any load failure means: leave torchcodec out)
        return False
    return True


def run_interleaved(args: argparse.Namespace, intervals: tuple[int, ...], num_videos: int, torchcodec_python: str | None) -> int:
    """--interleaved: per set, one child process (the torchcodec venv's python when there is one,
    which also sees clipserve) runs every method back to back on each video."""
    results: dict = {"mode": "interleaved, 1 process, CPU seconds", "augment": not args.frames_only, "videos": num_videos, "sets": {}}
    summary = []
    for interval in intervals:
        ensure_dataset(args.data, interval, num_videos)
        command = [torchcodec_python or sys.executable, str(Path(__file__).resolve()), "--child-interleaved", "--data", str(args.data),
                   "--videos", str(num_videos), "--keyframe-interval", str(interval)] + (["--frames-only"] if args.frames_only else [])
        done = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=3600)
        if done.returncode != 0:
            print(f"gop{interval}: interleaved run failed: {done.stderr.strip()[-500:]}")
            return 1
        rows = json.loads(done.stdout.strip().splitlines()[-1])
        ours = rows["clipserve"]
        ratios = {}
        for peer, key in (("naive", "clips_per_cpu_second"), ("torchcodec", "clips_per_cpu_second"), ("decode_all", "videos_per_cpu_second")):
            if peer in rows:
                ratios[f"clipserve_vs_{peer}"] = round(ours[key] / rows[peer][key], 2)
        for method, row in rows.items():
            print(f"gop{interval} {method:<11} 1 process: {row['clips_per_cpu_second']:>7} clips/CPU-s {row['videos_per_cpu_second']:>6} videos/CPU-s")
        for name, value in ratios.items():
            print(f"gop{interval} ratio {name} (CPU time): {value}")
        results["sets"][f"gop{interval}"] = {"rows": rows, "ratios": ratios}
        summary.append(f"gop{interval}: " + ", ".join(f"{k.replace('clipserve_vs_', 'x')}={v}" for k, v in ratios.items()))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    print("SUMMARY interleaved " + ("frames only" if args.frames_only else "with augmentation") + ": " + " | ".join(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/clipserve-bench-cpu"), help="where the generated videos are cached")
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="8 videos per set")
    parser.add_argument("--processes", type=str, default="1,2", help="comma-separated worker process counts")
    parser.add_argument("--torchcodec-venv", type=Path, default=Path("/tmp/clipserve-torchcodec-venv"),
                        help="throwaway venv for torchcodec (created on first use, shares this venv's torch)")
    parser.add_argument("--no-torchcodec", action="store_true", help="skip the torchcodec peer")
    parser.add_argument("--frames-only", action="store_true", help="no augmentation for any method (decode + crop only)")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--keyframe-interval", type=int, default=None, help="only this set (default: 250 and 30)")
    parser.add_argument("--interleaved", action="store_true",
                        help="one process, all methods back to back on each video (CPU seconds); steadiest on a shared machine")
    parser.add_argument("--child-torchcodec", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-interleaved", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    num_videos = 8 if args.quick else args.videos
    process_counts = [int(p) for p in args.processes.split(",")]
    intervals = (args.keyframe_interval,) if args.keyframe_interval else KEYFRAME_INTERVALS

    if args.child_interleaved:
        paths = ensure_dataset(args.data, intervals[0], num_videos)
        methods = [m for m in METHODS if m != "torchcodec" or _has_torchcodec()]
        print(json.dumps(measure_interleaved(methods, paths, make_plans(paths), not args.frames_only)))
        return 0
    if args.child_torchcodec:
        paths = ensure_dataset(args.data, intervals[0], num_videos)
        print(json.dumps(measure("torchcodec", paths, make_plans(paths), process_counts[0], not args.frames_only)))
        return 0

    torchcodec_python = None
    if args.no_torchcodec:
        print("# torchcodec skipped: --no-torchcodec", flush=True)
    else:
        try:
            torchcodec_python = setup_torchcodec_venv(args.torchcodec_venv)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
            print(f"# torchcodec skipped: {error}", flush=True)
    if args.interleaved:
        return run_interleaved(args, intervals, num_videos, torchcodec_python)
    results: dict = {"workload": {"num_clips": NUM_CLIPS, "frames_per_clip": FRAMES_PER_CLIP, "frame_stride": FRAME_STRIDE,
                                  "crop_size_pixels": CROP_SIZE_PIXELS, "augment": "none (frames only)" if args.frames_only else "aug+ defaults", "videos": num_videos,
                                  "video": f"{WIDTH_PIXELS}x{HEIGHT_PIXELS} {FPS} fps {SECONDS} s h264"},
                     "cpu_count": os.cpu_count(), "sets": {}}
    summary_parts = []
    for interval in intervals:
        started = time.perf_counter()
        paths = ensure_dataset(args.data, interval, num_videos)
        mb_per_s = 8 * sum(p.stat().st_size for p in paths) / len(paths) / SECONDS / 1e6
        print(f"# set gop{interval}: {len(paths)} videos ({mb_per_s:.2f} Mb/s mean) ready in {time.perf_counter() - started:.1f} s", flush=True)
        plans = make_plans(paths)
        rows = []
        for processes in process_counts:
            for method in METHODS:
                if method == "torchcodec":
                    row = torchcodec_in_other_python(torchcodec_python, args.data, interval, num_videos, processes, not args.frames_only)
                else:
                    row = measure(method, paths, plans, processes, not args.frames_only)
                rows.append(row)
                if "skipped" in row:
                    print(f"gop{interval} {method:<11} p={processes}: skipped: {row['skipped']}", flush=True)
                else:
                    print(f"gop{interval} {method:<11} p={processes}: {row['clips_per_second']:>7} clips/s {row['videos_per_second']:>7} videos/s "
                          f"({row['mean_video_ms']} ms/video wall; {row['clips_per_cpu_second']} clips/CPU-s)", flush=True)
        ffmpeg_row = measure_ffmpeg_null(paths)
        if ffmpeg_row:
            rows.append(ffmpeg_row)
            print(f"gop{interval} ffmpeg_null p=1: {ffmpeg_row['videos_per_second']} videos/s (includes process start)", flush=True)
        by = {(r["method"], r["processes"]): r for r in rows if "skipped" not in r}
        ratios = {}
        for processes in process_counts:
            ours = by.get(("clipserve", processes))
            if not ours:
                continue
            for peer, key in (("naive", "clips_per_second"), ("torchcodec", "clips_per_second"), ("decode_all", "videos_per_second")):
                if (peer, processes) in by:
                    ratios[f"clipserve_vs_{peer}_p{processes}"] = round(ours[key] / by[(peer, processes)][key], 2)
                    cpu_key = key.replace("_per_second", "_per_cpu_second")
                    ratios[f"clipserve_vs_{peer}_p{processes}_cpu"] = round(ours[cpu_key] / by[(peer, processes)][cpu_key], 2)
        if ("clipserve", 1) in by and ("clipserve", 2) in by:
            ratios["clipserve_p2_vs_p1"] = round(by[("clipserve", 2)]["clips_per_second"] / by[("clipserve", 1)]["clips_per_second"], 2)
        for name, value in ratios.items():
            print(f"gop{interval} ratio {name}: {value}", flush=True)
        results["sets"][f"gop{interval}"] = {"bitrate_mbps": round(mb_per_s, 2), "rows": rows, "ratios": ratios}
        summary_parts.append(f"gop{interval}: clipserve {by.get(('clipserve', 1), {}).get('clips_per_second')} clips/s p1, "
                             + ", ".join(f"{k.replace('clipserve_vs_', 'x')}={v}" for k, v in ratios.items()))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    print("SUMMARY " + " | ".join(summary_parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
