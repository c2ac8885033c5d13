"""``clipserve make-sample``: write a small synthetic dataset in the Kinetics-400 layout."""

from __future__ import annotations

import argparse

from clipserve.sample_data import CLASS_NAMES, build_sample, default_workers, make_sample_spec

HELP = "Make a small Kinetics-400-layout dataset of real encoded videos (one motion pattern per class)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset root to write (annotations/, train/, val/)")
    parser.add_argument("--classes", type=int, default=8, help=f"number of classes (1 to {len(CLASS_NAMES)})")
    parser.add_argument("--videos-per-class", type=int, default=12, help="videos per class (~80%% train, 20%% val)")
    parser.add_argument("--codec", choices=["h264", "vp9"], default="h264", help="h264 -> .mp4, vp9 -> .webm")
    parser.add_argument("--seed", type=int, default=0, help="everything written is a function of this seed")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"encoder processes (default: usable cores, here {default_workers()})")
    parser.add_argument("--force", action="store_true",
                        help="replace a sample dataset made with other settings (deletes only its files)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--layout", choices=["k400", "ucf101", "hmdb51", "ssv2"], default="k400",
                        help="k400: Kinetics CSVs and --codec; ucf101/hmdb51: official lists, XVID AVI; "
                             "ssv2: labels JSON, id-named VP9 WebM (see docs/usage.md)")


def run(args: argparse.Namespace) -> int:
    if args.layout != "k400":
        from clipserve.sample_layouts import build_layout_sample, make_layout_spec

        layout_spec = make_layout_spec(args.layout, args.classes, args.videos_per_class, args.seed)
        print(build_layout_sample(args.out, layout_spec, workers=args.workers, force=args.force).summary())
        return 0
    spec = make_sample_spec(args.classes, args.videos_per_class, args.codec, args.seed)
    result = build_sample(args.out, spec, workers=args.workers, force=args.force, progress=args.progress)
    print(result.summary())
    return 0
