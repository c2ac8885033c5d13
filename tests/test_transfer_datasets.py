"""The paper's transfer datasets in their official layouts: ``make-sample --layout`` writes them with
their real containers (XVID AVI, VP9 WebM), and the ucf101 / hmdb51 / ssv2 adapters, the index (its
broken-file reporting and cache), ``clipserve index/plan`` and the real service work on them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from clipserve.client import ClipStream
from clipserve.datasets.index import build_index
from clipserve.datasets.registry import adapter_names, list_split
from clipserve.errors import ConfigError, DatasetError
from clipserve.sample_layouts import build_layout_sample, make_layout_spec
from tests.service_helpers import REPO_ROOT, running_service

LAYOUTS = ["ucf101", "hmdb51", "ssv2"]
NUM_CLASSES, VIDEOS_PER_CLASS = 3, 4
TEST_SPLIT = {"ucf101": "test", "hmdb51": "test", "ssv2": "val"}


def _make(root: Path, layout: str) -> Path:
    spec = make_layout_spec(layout, NUM_CLASSES, VIDEOS_PER_CLASS, seed=1, frame_scale=0.25, max_duration_seconds=2.0)
    build_layout_sample(root, spec, workers=1)
    return root


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    return {layout: _make(base / layout, layout) for layout in LAYOUTS}


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clipserve", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=300)


# --- the generated sets are the layouts with their real containers ------------------------------------


def test_ucf101_and_hmdb51_samples_are_xvid_avi(layouts: dict[str, Path]) -> None:
    for layout in ("ucf101", "hmdb51"):
        videos = sorted(layouts[layout].rglob("*.avi"))
        assert len(videos) == NUM_CLASSES * VIDEOS_PER_CLASS
        with av.open(str(videos[0])) as container:
            assert container.format.name == "avi"
            context = container.streams.video[0].codec_context
            assert context.name == "mpeg4" and context.codec_tag == "XVID"
    ucf = layouts["ucf101"]
    class_index = (ucf / "ucfTrainTestlist" / "classInd.txt").read_text().split()
    assert class_index[0::2] == [str(i) for i in range(1, NUM_CLASSES + 1)]
    first = (ucf / "ucfTrainTestlist" / "trainlist01.txt").read_text().splitlines()[0].split()
    assert len(first) == 2 and (ucf / "UCF-101" / first[0]).is_file() and first[0].split("/")[1].startswith("v_")
    assert len((ucf / "ucfTrainTestlist" / "testlist01.txt").read_text().splitlines()[0].split()) == 1
    flags = {line.split()[1] for f in (layouts["hmdb51"] / "testTrainMulti_7030_splits").glob("*_test_split1.txt")
             for line in f.read_text().splitlines()}
    assert flags == {"1", "2"}


def test_ssv2_sample_is_id_named_vp9_webm_with_the_json_files(layouts: dict[str, Path]) -> None:
    root = layouts["ssv2"]
    labels = json.loads((root / "something-something-v2-labels.json").read_text())
    train = json.loads((root / "something-something-v2-train.json").read_text())
    test = json.loads((root / "something-something-v2-test.json").read_text())
    assert sorted(int(v) for v in labels.values()) == list(range(NUM_CLASSES))
    assert train[0]["template"].replace("[", "").replace("]", "") in labels and "[something]" in train[0]["template"]
    assert set(test[0]) == {"id"}
    video = root / "20bn-something-something-v2" / f"{train[0]['id']}.webm"
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generated_videos_are_served_frame_exact(layouts: dict[str, Path], layout: str) -> None:
    """Frame i of the executor is the i-th frame of a full sequential decode, on the XVID AVIs (with
    B-frames) and the VP9 WebMs the layouts use."""
    from clipserve.executors.pyav import decode_frames
    from tests.videos_pyav import sequential_reference

    index = build_index(layouts[layout], dataset=layout, split="train", workers=0, progress=False)
    record = index.records[0]
    path = index.path_of(0)
    reference = sequential_reference(path)
    assert record.num_frames == len(reference)
    indices = [len(reference) - 1, 0, *range(1, len(reference), 3)]
    assert np.array_equal(decode_frames(path, indices), reference[indices])
    if layout != "ssv2":
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.has_b_frames


# --- adapters -------------------------------------------------------------------------------------------


def test_every_adapter_is_registered() -> None:
    assert {"k400", "k600", "k700", "folder", "ucf101", "hmdb51", "ssv2"} <= set(adapter_names())


@pytest.mark.parametrize("layout", ["ucf101", "hmdb51"])
def test_numbered_splits_partition_the_videos_with_labels_from_the_official_files(layouts: dict[str, Path],
                                                                                  layout: str) -> None:
    root = layouts[layout]
    spec = make_layout_spec(layout, NUM_CLASSES, VIDEOS_PER_CLASS, seed=1, frame_scale=0.25, max_duration_seconds=2.0)
    expected_class = {v.relative_path: v.class_name for v in spec.videos}
    test_sets = []
    for split_id in (1, 2, 3):
        train = list_split(layout, root, "train", split_id)
        test = list_split(layout, root, "test", split_id)
        assert train.class_names == test.class_names == spec.class_names
        train_paths = {e.relative_path for e in train.entries}
        test_paths = {e.relative_path for e in test.entries}
        assert train_paths and test_paths and not train_paths & test_paths
        assert not train.missing_relative_paths and not test.missing_relative_paths
        for entry in [*train.entries, *test.entries]:
            assert entry.label_name == expected_class[entry.relative_path]
            assert train.class_names[entry.label_id] == entry.label_name
        test_sets.append(test_paths)
    assert len({frozenset(s) for s in test_sets}) > 1  # the three splits differ
    assert {e.relative_path for e in list_split(layout, root, "val", 2).entries} == test_sets[1]


def test_hmdb51_flag_0_videos_are_in_neither_half(tmp_path: Path) -> None:
    root = tmp_path / "hmdb"
    build_layout_sample(root, make_layout_spec("hmdb51", 1, 5, seed=2, frame_scale=0.25, max_duration_seconds=1.0),
                        workers=1)
    lines = next((root / "testTrainMulti_7030_splits").glob("*_test_split1.txt")).read_text().splitlines()
    unused = {line.split()[0] for line in lines if line.split()[1] == "0"}
    assert len(unused) == 1
    listed = {e.relative_path.rsplit("/", 1)[1] for split in ("train", "test") for e in list_split("hmdb51", root, split, 1).entries}
    assert len(listed) == 4 and not listed & unused


def test_ssv2_labels_come_from_the_template_and_test_has_none(layouts: dict[str, Path]) -> None:
    root = layouts["ssv2"]
    labels = json.loads((root / "something-something-v2-labels.json").read_text())
    rows = {r["id"]: r for r in json.loads((root / "something-something-v2-validation.json").read_text())}
    val = list_split("ssv2", root, "val")
    assert len(val.entries) == len(rows) == NUM_CLASSES
    for entry in val.entries:
        row = rows[Path(entry.relative_path).stem]
        assert entry.label_id == int(labels[row["template"].replace("[", "").replace("]", "")])
        assert val.class_names[entry.label_id] == entry.label_name
    test = list_split("ssv2", root, "test")
    assert len(test.entries) == NUM_CLASSES and {e.label_id for e in test.entries} == {-1}
    assert len(list_split("ssv2", root, "train").entries) == NUM_CLASSES * (VIDEOS_PER_CLASS - 2)


def test_ucf101_finds_files_whose_case_differs_from_the_list(tmp_path: Path) -> None:
    """The official lists spell some files differently (HandstandPushups/v_HandStandPushups_...)."""
    root = tmp_path / "ucf"
    build_layout_sample(root, make_layout_spec("ucf101", 1, 3, seed=0, frame_scale=0.25, max_duration_seconds=1.0),
                        workers=1)
    num_listed = len(list_split("ucf101", root, "train", 1).entries)
    listed = (root / "ucfTrainTestlist" / "trainlist01.txt").read_text().split()[0]
    on_disk = root / "UCF-101" / listed
    renamed = on_disk.with_name(on_disk.name.swapcase().replace("V_", "v_").replace(".AVI", ".avi"))
    on_disk.rename(renamed)
    entries = list_split("ucf101", root, "train", 1).entries
    assert renamed.relative_to(root).as_posix() in {e.relative_path for e in entries}
    folder = renamed.parent
    moved = folder.rename(folder.with_name(folder.name.upper()))  # the class folder's case differs too
    entries = list_split("ucf101", root, "train", 1).entries
    assert (moved / renamed.name).relative_to(root).as_posix() in {e.relative_path for e in entries}
    assert len(entries) == num_listed and not list_split("ucf101", root, "train", 1).missing_relative_paths


def test_ssv2_template_lookup_tolerates_case_and_rejects_unknown_templates(layouts: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    root = tmp_path / "ssv2"
    shutil.copytree(layouts["ssv2"], root, ignore=shutil.ignore_patterns(".clipserve"))
    train_path = root / "something-something-v2-train.json"
    rows = json.loads(train_path.read_text())
    expected = list_split("ssv2", root, "train")
    rows[0]["template"] = rows[0]["template"].upper().replace(" ", "  ")
    train_path.write_text(json.dumps(rows))
    assert list_split("ssv2", root, "train").entries == expected.entries
    rows[0]["template"] = "Juggling [something] on the moon"
    train_path.write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match="template 'Juggling something on the moon' is not in"):
        list_split("ssv2", root, "train")


def test_bad_split_names_ids_and_layouts_are_clear_errors(layouts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"split_id \(4\) must be in \[1, 3\]"):
        list_split("ucf101", layouts["ucf101"], "train", 4)
    with pytest.raises(DatasetError, match=r"split_id \(2\) must be 1 for dataset 'ssv2'"):
        list_split("ssv2", layouts["ssv2"], "train", 2)
    with pytest.raises(DatasetError, match="split 'dev' is not one of hmdb51's"):
        list_split("hmdb51", layouts["hmdb51"], "dev", 1)
    with pytest.raises(DatasetError, match="ucfTrainTestlist"):
        list_split("ucf101", layouts["hmdb51"], "train", 1)
    with pytest.raises(DatasetError, match="testTrainMulti_7030_splits"):
        list_split("hmdb51", layouts["ucf101"], "train", 1)
    with pytest.raises(DatasetError, match="something-something-v2-labels.json not found"):
        list_split("ssv2", layouts["ucf101"], "train")
    broken = tmp_path / "ucf"
    shutil.copytree(layouts["ucf101"] / "ucfTrainTestlist", broken / "ucfTrainTestlist")
    (broken / "ucfTrainTestlist" / "classInd.txt").write_text("1 A\n3 B\n")
    with pytest.raises(DatasetError, match="class indices must be 1..2"):
        list_split("ucf101", broken, "train", 1)
    with pytest.raises(ConfigError, match=r"videos_per_class \(2\) must be >= 3"):
        make_layout_spec("ucf101", 2, 2)


# --- index: broken files, missing rows and the cache behave as for Kinetics -------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_index_reports_broken_and_missing_files_and_reuses_its_cache(layouts: dict[str, Path], layout: str,
                                                                     tmp_path: Path) -> None:
    root = tmp_path / layout
    shutil.copytree(layouts[layout], root, ignore=shutil.ignore_patterns(".clipserve"))
    split = TEST_SPLIT[layout]
    listing = list_split(layout, root, split, 1)
    truncated, zero, gone = (root / e.relative_path for e in listing.entries[:3])
    truncated.write_bytes(truncated.read_bytes()[:300])
    zero.write_bytes(b"")
    gone.unlink()
    first = build_index(root, dataset=layout, split=split, workers=0, progress=False)
    summary = first.summary()
    assert summary.num_ok == len(listing.entries) - 3 and summary.num_broken == 2
    assert {b.relative_path for b in summary.broken_files} == {p.relative_to(root).as_posix() for p in (truncated, zero)}
    assert all(b.reason for b in summary.broken_files)
    assert summary.missing_relative_paths == [gone.relative_to(root).as_posix()]
    assert first.cache_path.parent == root / ".clipserve" and first.stats.num_probed == len(listing.entries) - 1
    again = build_index(root, dataset=layout, split=split, workers=0, progress=False)
    assert again.stats.num_probed == 0 and again.stats.num_reused == len(listing.entries) - 1
    assert [r.relative_path for r in again.records] == [r.relative_path for r in first.records]


def test_each_split_id_has_its_own_cache_file(layouts: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "ucf"
    shutil.copytree(layouts["ucf101"], root, ignore=shutil.ignore_patterns(".clipserve"))
    one = build_index(root, dataset="ucf101", split="train", split_id=1, workers=0, progress=False)
    two = build_index(root, dataset="ucf101", split="train", split_id=2, workers=0, progress=False)
    assert one.cache_path != two.cache_path and "train2" in two.cache_path.name
    assert build_index(root, dataset="ucf101", split="train", split_id=1, workers=0, progress=False).stats.num_probed == 0


# --- CLI and the real service ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cli_index_and_plan_work_on_each_layout(layouts: dict[str, Path], layout: str) -> None:
    root = str(layouts[layout])
    extra = ["--split-id", "2"] if layout != "ssv2" else []
    indexed = _run_cli("index", "--dataset", layout, "--root", root, "--split", "train", *extra, "--workers", "0",
                       "--json", "--no-progress")
    assert indexed.returncode == 0, indexed.stderr
    summary = json.loads(indexed.stdout)
    assert summary["num_ok"] > 0 and summary["num_broken"] == 0 and summary["num_classes"] == NUM_CLASSES
    planned = _run_cli("plan", "--dataset", layout, "--root", root, "--split", "train", *extra, "--video", "0",
                       "--num-clips", "2", "--frames-per-clip", "4", "--frame-stride", "2", "--crop-size", "32")
    assert planned.returncode == 0, planned.stderr
    clip_plan = json.loads(planned.stdout)
    assert len(clip_plan["clips"]) == 2 and all(len(c["frame_indices"]) == 4 for c in clip_plan["clips"])
    bad = _run_cli("index", "--dataset", layout, "--root", root, "--split-id", "7", "--workers", "0", "--no-progress")
    assert bad.returncode != 0 and "split_id (7)" in bad.stderr


@pytest.mark.parametrize("layout", LAYOUTS)
def test_service_serves_batches_of_each_layout(layouts: dict[str, Path], layout: str, tmp_path: Path) -> None:
    split = TEST_SPLIT[layout]
    extra = ["--dataset", layout, "--split", split, *(["--split-id", "3"] if layout != "ssv2" else [])]
    expected = build_index(layouts[layout], dataset=layout, split=split,
                           split_id=3 if layout != "ssv2" else 1, workers=0, progress=False)
    with running_service(layouts[layout], tmp_path / "service.log", extra_args=extra) as service:
        videos = service.get("/v1/videos", params={"limit": 100}).json()
        assert service.get("/v1/videos/0/plan", params={"epoch": 1}).status_code == 200
        with ClipStream(service.url, transport="http", timeout_seconds=120) as stream:
            batch = next(iter(stream))
            clips = batch.clips.numpy().copy()
            indices, labels = batch.video_index.tolist(), batch.label.tolist()
            batch.release()
    assert clips.shape[:2] == (2, 2) and clips.shape[3:] == (4, 32, 32) and clips.std() > 0
    assert labels == [expected.records[i].label_id for i in indices]
    assert len(expected.records) in (videos.get("total"), len(videos.get("items", videos.get("videos", []))))


def test_layout_sample_is_written_once_and_refuses_foreign_folders(tmp_path: Path) -> None:
    spec = make_layout_spec("hmdb51", 1, 3, seed=5, frame_scale=0.25, max_duration_seconds=1.0)
    root = tmp_path / "hmdb"
    first = build_layout_sample(root, spec, workers=1)
    assert first.num_encoded == 3 and build_layout_sample(root, spec, workers=1).num_encoded == 0
    other = make_layout_spec("hmdb51", 1, 3, seed=6, frame_scale=0.25, max_duration_seconds=1.0)
    with pytest.raises(DatasetError, match="other settings"):
        build_layout_sample(root, other, workers=1)
    assert build_layout_sample(root, other, workers=1, force=True).num_encoded == 3
    assert len(list(root.rglob("*.avi"))) == 3  # the previous set's videos were removed
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(DatasetError, match="not empty"):
        build_layout_sample(foreign, spec, workers=1)
    with pytest.raises(ConfigError, match="layout"):
        make_layout_spec("kinetics", 1, 3)


def test_kinetics_600_and_700_go_through_the_kinetics_adapter(tmp_path: Path) -> None:
    from clipserve.sample_data import build_sample, make_sample_spec

    root = tmp_path / "kinetics"
    build_sample(root, make_sample_spec(2, 2, max_duration_seconds=1.0, frame_scale=0.25, seed=2), workers=1,
                 progress=False)
    indexes = {name: build_index(root, dataset=name, split="val", workers=0, progress=False)
               for name in ("k400", "k600", "k700")}
    paths = {name: [(r.relative_path, r.label_id) for r in index.records] for name, index in indexes.items()}
    assert paths["k600"] == paths["k700"] == paths["k400"] and len(paths["k400"]) == 2
    assert len({index.cache_path for index in indexes.values()}) == 3  # one cache file per dataset name
    with pytest.raises(DatasetError, match=r"split_id \(2\) must be 1 for dataset 'k600'"):
        build_index(root, dataset="k600", split="val", split_id=2, workers=0, progress=False)
