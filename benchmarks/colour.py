"""Benchmark (accuracy, not speed): how far each decode path's RGB is from the colour a stream declares.

Workload: 96×64 frames of known RGB (a saturated solid colour, smooth gradients, uniform noise),
converted to YUV with a given matrix and range, chroma averaged 2×2, encoded near-losslessly as VP9
WebM (libvpx-vp9 crf 4) tagged with that matrix and range (or untagged: BT.601 limited). Each file
is decoded by:

- ``pyav``: the PyAV executor's conversion (``clipserve.executors.yuv.frame_to_rgb``, the declared
  matrix and range), compared with the source RGB (``pyav_vs_source``: codec + 4:2:0 loss only);
- ``dali_raw``: DALI's CPU decoder with its own conversion (``DaliExecutor(colour_correction=False)``);
- ``dali``: the DALI executor as it runs (BT.601 → declared matrix corrected in the graph);

the DALI figures are against the PyAV executor's RGB of the same frame. Errors are in 8-bit levels
(max and mean absolute difference over every pixel and channel). On noise, ``pyav_vs_source`` is
large by construction (per-pixel colour does not survive 4:2:0); that content tests the clipping
of DALI's BT.601 conversion, not the codec.

    PYTHONPATH=. .venv/bin/python benchmarks/colour.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import av
import numpy as np

from clipserve.executors.yuv import LUMA_WEIGHTS, UNTAGGED_COLOUR, YuvColour, frame_to_rgb

H, W = 64, 96
CASES = [  # (name, AVColorSpace tag, AVColorRange tag, colour the YUV is made with)
    ("bt709", 1, 1, YuvColour("bt709", False)),
    ("bt709_full", 1, 2, YuvColour("bt709", True)),
    ("bt2020", 9, 1, YuvColour("bt2020", False)),
    ("untagged", None, None, UNTAGGED_COLOUR),
]


def source_rgb(kind: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 content: 'solid', 'gradient' or 'noise'."""
    if kind == "noise":
        return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb = np.empty((H, W, 3), np.uint8)
    if kind == "solid":
        rgb[:] = (200, 40, 90)
        return rgb
    rows, cols = np.mgrid[0:H, 0:W]
    rgb[..., 0], rgb[..., 1] = 30 + cols * 190 // (W - 1), 220 - rows * 180 // (H - 1)
    rgb[..., 2] = 60 + (rows + cols) * 120 // (H + W - 2)
    return rgb


def encode(path: Path, rgb: np.ndarray, colorspace: int | None, color_range: int | None, colour: YuvColour) -> Path:
    """VP9 WebM of 4 frames of ``rgb`` converted with ``colour`` and tagged ``colorspace``/``color_range``."""
    kr, kb = LUMA_WEIGHTS[colour.matrix]
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = kr * r + (1.0 - kr - kb) * g + kb * b
    u, v = (b - y) / (2.0 * (1.0 - kb)), (r - y) / (2.0 * (1.0 - kr))
    scale, offset = (255.0, 0.0) if colour.full_range else (219.0, 16.0)
    chroma = 255.0 if colour.full_range else 224.0
    planes = [offset + scale * y, 128.0 + chroma * u, 128.0 + chroma * v]
    planes = [np.clip(np.round(p), 0, 255) for p in planes]
    half = [p.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3)).round().astype(np.uint8) for p in planes[1:]]
    i420 = np.concatenate([planes[0].astype(np.uint8).reshape(-1), *(p.reshape(-1) for p in half)]).reshape(H * 3 // 2, W)
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if colorspace is not None:
            stream.codec_context.colorspace, stream.codec_context.color_range = colorspace, color_range
        stream.options = {"crf": "4", "b": "0"}
        for index in range(4):
            frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _error(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return {"max_levels": int(diff.max()), "mean_levels": round(float(diff.mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the test videos go (default: a temporary folder)")
    args = parser.parse_args()
    from clipserve.executors.dali import DaliExecutor

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        raw_executor = DaliExecutor("cpu", batch_size=1, num_threads=1, colour_correction=False)
        executor = DaliExecutor("cpu", batch_size=1, num_threads=1)
        for kind in ("solid", "gradient", "noise"):
            rgb = source_rgb(kind)
            for name, colorspace, color_range, colour in CASES:
                path = encode(folder / f"{kind}_{name}.webm", rgb, colorspace, color_range, colour)
                with av.open(str(path)) as container:
                    pyav = frame_to_rgb(next(container.decode(video=0)))
                rows.append({
                    "content": kind, "stream": name,
                    "pyav_vs_source": _error(pyav, rgb),
                    "dali_raw_vs_pyav": _error(raw_executor.decode_frames(path, [0])[0], pyav),
                    "dali_vs_pyav": _error(executor.decode_frames(path, [0])[0], pyav),
                })
    import nvidia.dali

    report = {"benchmark": "colour", "dali_version": nvidia.dali.__version__, "pyav_version": av.__version__,
              "machine": platform.machine(), "frame": f"{W}x{H} VP9 WebM", "rows": rows}
    print(json.dumps(report, indent=2))
    tagged = [r for r in rows if r["stream"] != "untagged" and r["content"] != "noise"]
    print(f"colour: on tagged smooth content DALI's own conversion is off by up to "
          f"{max(r['dali_raw_vs_pyav']['max_levels'] for r in tagged)} levels, the corrected DALI path by "
          f"{max(r['dali_vs_pyav']['max_levels'] for r in tagged)}, PyAV vs source by "
          f"{max(r['pyav_vs_source']['max_levels'] for r in tagged)}")


if __name__ == "__main__":
    main()
