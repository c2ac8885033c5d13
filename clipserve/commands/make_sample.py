"""``clipserve make-sample``: write a small synthetic dataset in the Kinetics-400 layout."""

from __future__ import annotations

import argparse
import sys

from clipserve.sample import CLASS_NAMES, build_sample, default_workers, make_sample_spec
from clipserve.sample.spec import LEARNABLE_CLASS_NAMES, make_learnable_spec

HELP = "Make a small Kinetics-400-layout dataset of real encoded videos (one motion pattern per class)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset root to write (annotations/, train/, val/)")
    parser.add_argument("--preset", choices=["motion", "learnable", "transfer"], default="motion",
                        help="motion: one motion pattern per class, K400-like sizes and rates (default); "
                             "learnable: one object category per class whose pose, scale, shape, colour and scene "
                             "drift along the timeline, 48x48 at 15 fps, 8 s (10 x 60 videos, 200 val); "
                             "transfer: the learnable world with 10 categories it never shows, in the ucf101 or "
                             "hmdb51 --layout (the target of a transfer experiment)")
    parser.add_argument("--classes", type=int, default=None,
                        help=f"number of classes (motion: 1 to {len(CLASS_NAMES)}, default 8; "
                             f"learnable: 1 to {len(LEARNABLE_CLASS_NAMES)}, default 10)")
    parser.add_argument("--videos-per-class", type=int, default=None,
                        help="videos per class (motion: default 12, ~80%% train; learnable: default 60, 1/3 val)")
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


def _or(value: int | None, default: int) -> int:
    """``value`` unless it was left out (0 stays 0, so that it is refused with a clear message)."""
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    if args.preset == "transfer" and args.layout not in ("ucf101", "hmdb51"):
        print(f"make-sample: --preset transfer writes the ucf101 or hmdb51 layout; add --layout ucf101 "
              f"(got --layout {args.layout})", file=sys.stderr)
        return 2
    if args.layout != "k400":
        if args.preset == "learnable":
            print(f"make-sample: --preset {args.preset} writes the k400 layout only; drop --layout {args.layout}",
                  file=sys.stderr)
            return 2
        from clipserve.sample_layouts import build_layout_sample, make_layout_spec

        world = "transfer" if args.preset == "transfer" else "motion"
        layout_spec = make_layout_spec(args.layout, _or(args.classes, 10 if world == "transfer" else 8),
                                       _or(args.videos_per_class, 12), args.seed, world=world)
        print(build_layout_sample(args.out, layout_spec, workers=args.workers, force=args.force).summary())
        return 0
    if args.preset == "learnable":
        spec = make_learnable_spec(_or(args.classes, 10), _or(args.videos_per_class, 60), args.codec, args.seed)
    else:
        spec = make_sample_spec(_or(args.classes, 8), _or(args.videos_per_class, 12), args.codec, args.seed)
    result = build_sample(args.out, spec, workers=args.workers, force=args.force, progress=args.progress)
    print(result.summary())
    return 0
