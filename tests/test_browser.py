"""The service's pages in headless Chromium with no network (issue 23, items 4 and 13): ``/docs``
and ``/redoc`` render from the packaged assets, and ``/`` opens on video 0 with its timeline and
contact sheet instead of a broken-image icon and empty boxes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from clipserve.inspect.render import CLIP_COLORS
from tests.browser_helpers import CHROMIUM, chromium_dom, chromium_screenshot
from tests.service_helpers import RunningService, make_tiny_dataset, start_service, stop_and_check_clean

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (CI's .ci/run installs it)")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = make_tiny_dataset(tmp_path_factory.mktemp("browser") / "k400")
    running = start_service(root, tmp_path_factory.mktemp("browser-log") / "service.log")
    try:
        yield running
    finally:
        stop_and_check_clean(running)


def test_docs_pages_name_no_outside_host(service: RunningService) -> None:
    for path in ("/docs", "/redoc"):
        html = httpx.get(service.url + path, timeout=30).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert sources, html
        assert not [s for s in sources if "://" in s or s.startswith("//")], sources  # no CDN, no fonts
        for source in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert httpx.get(service.url + source, timeout=30).status_code == 200, source


def test_swagger_ui_renders_the_operations_offline(service: RunningService, tmp_path: Path) -> None:
    """Swagger UI's script ran (from the package, no CDN reachable) and listed the operations."""
    dom = chromium_dom(service.url + "/docs", tmp_path, expect='class="opblock-summary-path"')
    paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert {"/v1/info", "/v1/videos/{video_index}/plan", "/v1/consumers"} <= paths, sorted(paths)
    assert "clipserve" in dom


def test_redoc_renders_the_operations_offline(service: RunningService, tmp_path: Path) -> None:
    dom = chromium_dom(service.url + "/redoc", tmp_path, expect="/v1/videos/{video_index}/plan")
    assert "/v1/info" in dom and "Failed to load" not in dom


def _pixels_near(image: np.ndarray, color: tuple[int, int, int], tolerance: int = 6) -> int:
    return int((np.abs(image.astype(int) - np.array(color)).max(axis=-1) <= tolerance).sum())


def test_the_page_opens_on_video_0_with_its_timeline_and_contact_sheet(service: RunningService, tmp_path: Path) -> None:
    """``/`` without a #fragment: video 0 is selected, its plan, timeline and contact sheet show
    (no broken-image icon: the image is hidden until it loads); the screenshot has the clips' colours."""
    dom = chromium_dom(service.url + "/", tmp_path, expect='id="video-list"')
    assert '<li data-index="0" class="selected">' in dom
    sheet = re.search(r'<img id="sheet"[^>]*>', dom).group(0)  # type: ignore[union-attr]
    assert 'src="/v1/videos/0/clips.png?epoch=0' in sheet and "hidden" not in sheet
    assert '"video_index": 0,' in dom and "pick a video" not in dom
    assert re.search(r'<div id="timeline"[^>]*hidden', dom) is None
    png = chromium_screenshot(service.url + "/", tmp_path / "page.png", tmp_path)
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (900, 1280, 3)
    for color in CLIP_COLORS[:2]:  # ρ = 2: each clip's interval on the timeline (and the sheet's)
        assert _pixels_near(image, color) >= 50, color
