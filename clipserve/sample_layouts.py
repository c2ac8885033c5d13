"""Small synthetic datasets in the official layouts of the paper's transfer datasets
(``clipserve make-sample --layout ucf101|hmdb51|ssv2``), with each dataset's real containers.

The videos are the Kinetics-layout sample's (``clipserve.sample``: one motion pattern per
class, content drawn per video), renamed and re-encoded the way each dataset ships:

- ``ucf101``: XVID AVI (FFmpeg's ``mpeg4`` encoder, codec tag ``XVID``, two B-frames as XviD's default,
  one VOP per AVI chunk: FFmpeg does not write XviD's "packed bitstream"), 320×240, 25 fps::

      UCF-101/<Class>/v_<Class>_g<GG>_c<CC>.avi
      ucfTrainTestlist/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt

  Two clips per group; split N tests the groups g with (g - 1) mod 3 = N - 1 (as the official
  splits, a group is never in both halves of one split).
- ``hmdb51``: XVID AVI, 320×240, 30 fps::

      <class>/<Movie>_<class>_u_nm_np1_fr_med_<k>.avi
      testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt   ("<file> <flag>", 1 train, 2 test, 0 unused)

  About 30 % of a class is test (flag 2) in each split, a different part per split; with five or
  more videos per class one is unused (flag 0), as in the official files.
- ``ssv2``: VP9 WebM, 12 fps, 240 pixels high::

      20bn-something-something-v2/<id>.webm
      something-something-v2-labels.json, -train.json, -validation.json, -test.json

  The class names become templates ``"Moving [something] like <class>"``; the labels file maps the
  template without brackets to the class id. Per class: the last video is test (no label, as the
  official test file), the one before validation, the rest train.

Deterministic for a seed (file contents depend on the local FFmpeg build, as for the K400 sample).
A folder is written once: a complete set with the same request is left alone, other contents are
refused unless ``force`` (which deletes only what a previous ``make-sample`` wrote).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import av
import numpy as np
from pydantic import BaseModel, ConfigDict

from clipserve.errors import ConfigError, DatasetError
from clipserve.sample import SampleVideo, default_workers, make_sample_spec, render_frames
from clipserve.sample.spec import make_learnable_spec
from clipserve.sample.build import encode_atomically

Layout = Literal["ucf101", "hmdb51", "ssv2"]
LAYOUTS: tuple[Layout, ...] = ("ucf101", "hmdb51", "ssv2")
MANIFEST_NAME = "clipserve-sample.json"
SSV2_PREFIX = "something-something-v2-"
SSV2_VIDEOS = "20bn-something-something-v2"

# (width, height, fps, encoder, codec tag) of each layout's videos, as the datasets ship them
_FORMATS: dict[str, tuple[int, int, int, str, str | None]] = {
    "ucf101": (320, 240, 25, "mpeg4", "XVID"),
    "hmdb51": (320, 240, 30, "mpeg4", "XVID"),
    "ssv2": (428, 240, 12, "libvpx-vp9", None),
}


class LayoutVideo(BaseModel):
    """One video of a layout sample: where it goes, its class, and the content to render."""

    model_config = ConfigDict(frozen=True)

    relative_path: str
    class_name: str
    """The class as the layout spells it ('PassingAmericanFootballInGame', 'pass_american_football_in_game', a template)."""
    split_flags: list[str]
    """Per official split id 1..3 (ucf101/hmdb51): 'train', 'test' or 'unused'; ssv2: one of 'train', 'validation', 'test'."""
    content: SampleVideo


class LayoutSpec(BaseModel):
    """Everything ``make-sample --layout`` writes, decided from its arguments alone."""

    model_config = ConfigDict(frozen=True)

    layout: Layout
    seed: int
    num_classes: int
    videos_per_class: int
    frame_scale: float
    max_duration_seconds: float
    class_names: list[str]
    videos: list[LayoutVideo]

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def _ucf_name(kinetics_name: str) -> str:
    return "".join(word[:1].upper() + word[1:] for word in re.findall(r"[A-Za-z0-9]+", kinetics_name))


def _hmdb_name(kinetics_name: str) -> str:
    return "_".join(word.lower() for word in re.findall(r"[A-Za-z0-9]+", kinetics_name))


def _ssv2_template(kinetics_name: str) -> str:
    return f"Moving [something] like {' '.join(re.findall(r'[A-Za-z0-9]+', kinetics_name)).lower()}"


def make_layout_spec(layout: str, num_classes: int = 5, videos_per_class: int = 6, seed: int = 0, *,
                     frame_scale: float = 1.0, max_duration_seconds: float = 6.0,
                     world: Literal["motion", "transfer"] = "motion") -> LayoutSpec:
    """The deterministic specification of a ``layout`` sample (no files touched).

    Args:
        layout: 'ucf101', 'hmdb51' or 'ssv2'.
        num_classes: classes, 1 to the catalogue size of ``clipserve.sample``.
        videos_per_class: ≥ 3 (every split needs a train and a test video per class).
        frame_scale: multiply the layout's frame size (kept a multiple of 4, ≥ 32), in (0, 4].
        max_duration_seconds: longest video, seconds, > 0 (durations come from the K400 sample's spec).
        world: 'motion' (the K400 sample's videos, at the layout's frame size and rate) or 'transfer'
            (the learnable world's videos with the categories it never shows, ``TRANSFER_CLASS_NAMES``,
            at the learnable world's 48² pixels, 15 fps, 8 s; ``frame_scale`` and
            ``max_duration_seconds`` do not apply): the target of a transfer experiment.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout ({layout!r}) must be one of {', '.join(LAYOUTS)}")
    if videos_per_class < 3:
        raise ConfigError(f"videos_per_class ({videos_per_class}) must be >= 3 for the {layout} layout "
                          "(each split needs train and test videos of every class)")
    if not 0 < frame_scale <= 4:
        raise ConfigError(f"frame_scale ({frame_scale}) must be in (0, 4]")
    if world == "transfer":
        base = make_learnable_spec(num_classes, videos_per_class, "h264", seed, categories="transfer")
    else:
        base = make_sample_spec(num_classes, videos_per_class, "h264", seed, max_duration_seconds=max_duration_seconds)
    width, height, fps, _, _ = _FORMATS[layout]
    width, height = (max(32, 4 * round(d * frame_scale / 4)) for d in (width, height))
    names = {"ucf101": _ucf_name, "hmdb51": _hmdb_name, "ssv2": _ssv2_template}[layout]
    by_class: dict[str, list[SampleVideo]] = {}
    for video in base.videos:
        by_class.setdefault(video.label_name, []).append(video)
    videos: list[LayoutVideo] = []
    ssv2_ids = iter(sorted(np.random.default_rng([seed, 2]).choice(220_000, size=len(base.videos), replace=False) + 1))
    for class_index, (kinetics_name, members) in enumerate(by_class.items()):
        class_name = names(kinetics_name)
        n = len(members)
        for j, source in enumerate(members):
            if world == "transfer":  # the learnable world's own size and rate
                content = source.model_copy(update={"split": "train"})
            else:
                num_frames = max(1, round(source.duration_seconds * fps))
                content = source.model_copy(update={"width_pixels": width, "height_pixels": height, "fps_numerator": fps,
                                                     "fps_denominator": 1, "duration_seconds": num_frames / fps})
            if layout == "ucf101":
                group, clip = j // 2 + 1, j % 2 + 1
                relative = f"UCF-101/{class_name}/v_{class_name}_g{group:02d}_c{clip:02d}.avi"
                num_groups = (n + 1) // 2
                flags = ["test" if (group - 1) % min(3, num_groups) == (k % min(3, num_groups)) else "train"
                         for k in range(3)]
            elif layout == "hmdb51":
                movie = re.sub(r"[^A-Za-z0-9]", "", source.youtube_id)
                relative = f"{class_name}/{movie}_{class_name}_u_nm_np1_fr_med_{j}.avi"
                num_test = max(1, round(0.3 * n))
                flags = []
                for k in range(3):
                    position = (j + k * num_test) % n
                    flags.append("test" if position < num_test else "unused" if n >= 5 and position == n - 1 else "train")
            else:
                relative = f"{SSV2_VIDEOS}/{next(ssv2_ids)}.webm"
                flags = ["test" if j == n - 1 else "validation" if j == n - 2 else "train"]
            videos.append(LayoutVideo(relative_path=relative, class_name=class_name, split_flags=flags, content=content))
    class_names = sorted({v.class_name for v in videos})
    return LayoutSpec(layout=layout, seed=seed, num_classes=num_classes, videos_per_class=videos_per_class,
                      frame_scale=frame_scale, max_duration_seconds=max_duration_seconds,
                      class_names=class_names, videos=videos)


def encode_layout_video(layout: str, video: SampleVideo, path: str | Path) -> int:
    """Render ``video`` and encode it as ``layout`` ships its videos; return the file size in bytes.

    ucf101/hmdb51: FFmpeg ``mpeg4`` (MPEG-4 Part 2, two B-frames, unpacked) in AVI with codec tag XVID;
    ssv2: libvpx-vp9 in WebM. One encoder thread (parallelism comes from encoding several videos).
    """
    _, _, _, encoder, tag = _FORMATS[layout]
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(encoder, rate=video.fps)
        stream.width, stream.height, stream.pix_fmt = video.width_pixels, video.height_pixels, "yuv420p"
        stream.codec_context.gop_size = 2 * video.fps_numerator // video.fps_denominator
        if tag is not None:
            stream.codec_context.codec_tag = tag
        if encoder == "mpeg4":  # ~0.25 bit per pixel, about what UCF101's XVID files use
            bits_per_pixel = 2.0 if video.world == "learnable" else 0.25  # 48² frames: keep the markings legible
            stream.codec_context.bit_rate = int(bits_per_pixel * video.width_pixels * video.height_pixels * float(video.fps))
            stream.codec_context.max_b_frames = 2  # as XviD's default (unpacked: one VOP per AVI chunk)
            stream.options = {"threads": "1"}
        else:
            stream.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}
        for index, planes in enumerate(render_frames(video, pixel_format="yuv420p")):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path).stat().st_size


def _encode_into(root: str, layout: str, video: LayoutVideo) -> int:
    final = Path(root) / video.relative_path
    partial = final.with_name(f".partial-{final.name}")
    return encode_atomically(final, partial, lambda path: encode_layout_video(layout, video.content, path))


class LayoutBuildResult(BaseModel):
    """What :func:`build_layout_sample` did."""

    root: str
    layout: str
    num_videos: int
    num_encoded: int
    total_bytes: int
    elapsed_seconds: float

    def summary(self) -> str:
        """One line for people."""
        if not self.num_encoded:
            return f"{self.layout} sample at {self.root} is complete ({self.num_videos} videos); nothing to do"
        return (f"made {self.num_encoded} of {self.num_videos} {self.layout} videos ({self.total_bytes / 1e6:.1f} MB) "
                f"in {self.elapsed_seconds:.1f} s -> {self.root}")


def build_layout_sample(root: str | Path, spec: LayoutSpec, *, workers: int | None = None,
                        force: bool = False) -> LayoutBuildResult:
    """Write ``spec``'s videos and annotation files under ``root`` (see the module docstring).

    Args:
        workers: encoder processes; ``None`` = usable cores; 1 = in this process.
        force: replace a folder that holds something else (deletes only files a previous
            ``make-sample`` listed in its manifest).
    """
    started = time.perf_counter()
    root = Path(root).expanduser()
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers ({workers}) must be >= 1")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"--out {root} exists and is not a directory")
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    except (OSError, ValueError):
        manifest = {}  # unreadable: not ours to trust, handled as "made with other settings"
    fingerprint = spec.fingerprint()
    if manifest is not None and (not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint):
        if not force:
            raise DatasetError(f"{root} holds a sample dataset made with other settings; use --force or another --out")
        for relative in (manifest.get("relative_paths", []) if isinstance(manifest, dict) else []):
            if ".." not in Path(relative).parts:
                (root / relative).unlink(missing_ok=True)
    elif manifest is None and root.is_dir() and any(root.iterdir()) and not force:
        raise DatasetError(f"{root} is not empty and was not made by make-sample; use --force or another --out")
    annotations = _annotation_files(spec)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps({"fingerprint": fingerprint, "layout": spec.layout,
                                         "relative_paths": [v.relative_path for v in spec.videos] + sorted(annotations)},
                                        indent=1))
    todo = [v for v in spec.videos if not (root / v.relative_path).is_file()]
    if workers == 1 or len(todo) <= 1:
        for video in todo:
            _encode_into(str(root), spec.layout, video)
    else:
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(_encode_into, str(root), spec.layout, v) for v in todo]:
                future.result()
    for relative, text in annotations.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    total = sum((root / v.relative_path).stat().st_size for v in spec.videos)
    return LayoutBuildResult(root=str(root), layout=spec.layout, num_videos=len(spec.videos), num_encoded=len(todo),
                             total_bytes=total, elapsed_seconds=time.perf_counter() - started)


def _annotation_files(spec: LayoutSpec) -> dict[str, str]:
    """Relative path → text of every annotation file of ``spec``'s layout."""
    files: dict[str, str] = {}
    if spec.layout == "ucf101":
        files["ucfTrainTestlist/classInd.txt"] = "".join(f"{i + 1} {name}\r\n" for i, name in enumerate(spec.class_names))
        label = {name: i + 1 for i, name in enumerate(spec.class_names)}
        for k in range(3):
            train = [v for v in spec.videos if v.split_flags[k] == "train"]
            test = [v for v in spec.videos if v.split_flags[k] == "test"]
            strip = len("UCF-101/")
            files[f"ucfTrainTestlist/trainlist0{k + 1}.txt"] = "".join(
                f"{v.relative_path[strip:]} {label[v.class_name]}\r\n" for v in train)
            files[f"ucfTrainTestlist/testlist0{k + 1}.txt"] = "".join(f"{v.relative_path[strip:]}\r\n" for v in test)
    elif spec.layout == "hmdb51":
        flag = {"train": "1", "test": "2", "unused": "0"}
        for name in spec.class_names:
            members = [v for v in spec.videos if v.class_name == name]
            for k in range(3):
                files[f"testTrainMulti_7030_splits/{name}_test_split{k + 1}.txt"] = "".join(
                    f"{v.relative_path.rsplit('/', 1)[-1]} {flag[v.split_flags[k]]} \n" for v in members)
    else:
        plain = {name: name.replace("[", "").replace("]", "") for name in spec.class_names}
        files[f"{SSV2_PREFIX}labels.json"] = json.dumps(
            {plain[name]: str(i) for i, name in enumerate(spec.class_names)}, indent=1)
        for split in ("train", "validation", "test"):
            rows: list[dict[str, object]] = []
            for v in spec.videos:
                if v.split_flags[0] != split:
                    continue
                video_id = Path(v.relative_path).stem
                if split == "test":
                    rows.append({"id": video_id})
                else:
                    thing = v.content.youtube_id.lower()
                    rows.append({"id": video_id, "label": v.class_name.replace("[something]", thing),
                                 "template": v.class_name, "placeholders": [thing]})
            files[f"{SSV2_PREFIX}{split}.json"] = json.dumps(rows, indent=1)
    return files
