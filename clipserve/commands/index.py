"""``clipserve index``: probe (or refresh) a dataset split's video index and print its summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipserve.datasets.registry import adapter_names

HELP = "probe every video of a split once (packet scan, cached on disk) and print a summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="k400", choices=adapter_names(), help="dataset adapter")
    parser.add_argument("--root", type=Path, required=True, help="dataset root directory")
    parser.add_argument("--split", default="train", help="dataset split, e.g. train or val")
    parser.add_argument("--split-id", type=int, default=1,
                        help="official train/test split of ucf101/hmdb51, 1..3 (default 1)")
    parser.add_argument("--workers", type=int, default=None,
                        help="probe processes (default: one per CPU core; 0 = in this process)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="SQLite cache file (default: <root>/.clipserve/index-<dataset>-<split>.sqlite, "
                             "or ~/.cache/clipserve/ when the root is read-only)")
    parser.add_argument("--probe-timeout-seconds", type=float, default=60.0,
                        help="a file whose probe takes longer is recorded as broken")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _histogram(title: str, counts: dict[str, int], limit: int = 8) -> list[str]:
    if not counts:
        return []
    items = list(counts.items())
    shown = ", ".join(f"{key} ×{value}" for key, value in items[:limit])
    more = f", … {len(items) - limit} more" if len(items) > limit else ""
    return [f"  {title:<12} {shown}{more}"]


def format_summary(summary) -> str:  # noqa: ANN001 (IndexSummary, imported lazily)
    """The human-readable summary ``clipserve index`` prints."""
    lines = [
        f"{summary.dataset}/{summary.split} at {summary.root}",
        f"  videos       {summary.num_ok} ok, {summary.num_broken} broken, {summary.num_missing} missing "
        f"rows, {summary.num_classes} classes",
        f"  duration     {summary.total_hours:.2f} h in total, {summary.mean_duration_seconds:.1f} s on average, "
        f"{summary.total_frames} frames",
    ]
    lines += _histogram("codecs", summary.codecs)
    lines += _histogram("fps", summary.fps_histogram)
    lines += _histogram("resolution", summary.resolution_histogram)
    extras = [f"{summary.num_with_audio} with audio", f"{summary.num_variable_frame_rate} variable frame rate",
              f"{summary.num_rotated} rotated", f"{summary.num_frames_estimated} with estimated frame counts",
              f"{summary.num_frame_access_sequential} decoded sequentially (packet timestamps do not identify frames)"]
    lines.append(f"  other        {', '.join(extras)}")
    if summary.broken_by_reason:
        lines.append("  broken       " + ", ".join(f"{k} ×{v}" for k, v in summary.broken_by_reason.items()))
        for item in summary.broken_files[:10]:
            lines.append(f"    {item.relative_path}: {item.reason}")
        if len(summary.broken_files) > 10:
            lines.append(f"    … {len(summary.broken_files) - 10} more (see --json)")
    if summary.num_missing:
        lines.append(f"  missing      {summary.num_missing} annotation rows have no file, e.g.")
        for path in summary.missing_relative_paths[:5]:
            lines.append(f"    {path}")
    lines.append(f"  cache        {summary.cache_path} ({summary.num_probed} probed now, {summary.num_reused} "
                 f"reused, {summary.num_dropped} dropped, {summary.elapsed_seconds:.1f} s)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from clipserve.datasets.index import build_index

    index = build_index(args.root, dataset=args.dataset, split=args.split, split_id=args.split_id, workers=args.workers,
                        progress=args.progress, cache_path=args.cache,
                        probe_timeout_seconds=args.probe_timeout_seconds)
    summary = index.summary()
    print(summary.model_dump_json(indent=2) if args.json else format_summary(summary))
    return 0
