"""Codec support is decided by the decoders themselves: FFmpeg's decoder lookup for PyAV, a sample
decoded by DALI for DALI (issue 12). Real files, real decoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipserve.datasets.probe import probe_video
from clipserve.errors import UnsupportedCodecError
from clipserve.executors.backend import choose_backend, dali_accepts, dali_importable, pyav_decodes
from clipserve.executors.pyav import decode_frames
from tests.videos_classes import make_class
from tests.videos_pyav import sequential_reference


def test_pyav_support_is_ffmpegs_decoder_lookup() -> None:
    # DivX 3: the codec is 'msmpeg4v3', FFmpeg's decoder for it is named 'msmpeg4'
    assert pyav_decodes("msmpeg4v3") and pyav_decodes("msmpeg4")
    assert pyav_decodes("h264") and pyav_decodes("vp9") and pyav_decodes("mpeg4")
    assert not pyav_decodes("no-such-codec")


def test_divx3_is_indexed_and_served_by_pyav(tmp_path: Path) -> None:
    path = make_class(tmp_path, "divx3.avi")
    record = probe_video(path)
    assert record.status == "ok" and record.codec == "msmpeg4v3"
    assert choose_backend("pyav", {record.codec}, cuda=False, dali_available=False) == "pyav"  # refused before issue 12
    assert choose_backend("auto", {record.codec}, cuda=False, dali_available=False) == "pyav"
    reference = sequential_reference(path)
    assert np.array_equal(decode_frames(path, [0, 45, 89]), reference[[0, 45, 89]])


def test_a_codec_ffmpeg_cannot_decode_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedCodecError, match="no-such-codec.*re-encode"):
        choose_backend("pyav", {"no-such-codec"}, cuda=False, dali_available=False)


@pytest.mark.skipif(not dali_importable(), reason="needs nvidia-dali")
def test_dali_cpu_support_is_asked_of_dali() -> None:
    # DALI's CPU decoder (>= 2.1.1) takes VP8/VP9/MJPEG and refuses H.264 and MPEG-4 Part 2
    assert dali_accepts("vp9", "cpu") and dali_accepts("libvpx", "cpu") and dali_accepts("mjpeg", "cpu")
    assert not dali_accepts("h264", "cpu") and not dali_accepts("msmpeg4v3", "cpu")
    assert not dali_accepts("no-such-codec", "cpu")
    # the documented list is only the fallback for codecs no sample can be encoded of
    assert dali_accepts("h264", "gpu", ask_dali=False) and not dali_accepts("h264", "cpu", ask_dali=False)


@pytest.mark.needs_cuda
def test_dali_gpu_support_is_asked_of_nvdec() -> None:
    assert dali_accepts("h264", "gpu") and dali_accepts("vp9", "gpu")
    assert not dali_accepts("prores", "gpu")
