"""Frame exactness on the real-world file classes of issue 12 (``tests/videos_classes.py``).

For every class: the index's frame count against a full sequential PyAV decode, and the PyAV
executor's frames at up to 40 random indices against the full decode's frames (pixel-identical or
not), plus whether ``--backend pyav`` accepts the codec and the strategy the index records.

    PYTHONPATH=$PWD python benchmarks/frame_exactness.py [--folder DIR]

Prints one JSON object per class, then a JSON summary and a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipserve.datasets.probe import probe_video  # noqa: E402
from clipserve.errors import DecodeError, UnsupportedCodecError  # noqa: E402
from clipserve.executors.backend import choose_backend  # noqa: E402
from clipserve.executors.pyav import DecodeStats, decode_frames  # noqa: E402
from clipserve.executors.yuv import frame_to_rgb  # noqa: E402
from tests.videos_classes import CLASSES, make_class  # noqa: E402

NUM_INDICES = 40


def full_decode(path: Path) -> np.ndarray:
    """Every frame of a plain sequential PyAV decode, (N, H, W, 3) uint8 RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return np.stack([frame_to_rgb(frame) for frame in container.decode(stream)])


def measure(path: Path, name: str) -> dict:
    reference = full_decode(path)
    result = probe_video(path)
    indices = sorted({int(i) for i in np.random.default_rng(0).integers(0, len(reference), NUM_INDICES)})
    stats = DecodeStats()
    try:
        frames = decode_frames(path, indices, stats=stats)
        differing = sum(int(not np.array_equal(frames[k], reference[i])) for k, i in enumerate(indices))
        error = ""
    except DecodeError as exc:
        differing, error = len(indices), str(exc)
    try:
        choose_backend("pyav", {result.codec}, cuda=False, dali_available=False)
        accepted = True
    except UnsupportedCodecError:
        accepted = False
    return dict(
        name=name, codec=result.codec, index_frames=result.num_frames, full_decode_frames=len(reference),
        num_indices=len(indices), differing_indices=differing, pyav_backend_accepts=accepted,
        frame_access=getattr(result, "frame_access", None), frame_access_reason=getattr(result, "frame_access_reason", None),
        probe_seconds=round(result.probe_seconds, 4), sequential_fallbacks=stats.sequential_fallbacks, error=error,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="where to write the class files (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [measure(make_class(folder, name), name) for name in CLASSES]
    for row in rows:
        print(json.dumps(row))
    summary = dict(
        num_classes=len(rows),
        total_differing_indices=sum(r["differing_indices"] for r in rows),
        total_indices=sum(r["num_indices"] for r in rows),
        count_mismatches=[r["name"] for r in rows if r["index_frames"] != r["full_decode_frames"]],
        refused_codecs=[r["name"] for r in rows if not r["pyav_backend_accepts"]],
    )
    print(json.dumps(summary))
    print(f"frame exactness: {summary['total_differing_indices']} of {summary['total_indices']} indices differ from a "
          f"full decode over {len(rows)} classes; count mismatches {summary['count_mismatches'] or 'none'}; "
          f"refused {summary['refused_codecs'] or 'none'}")


if __name__ == "__main__":
    main()
