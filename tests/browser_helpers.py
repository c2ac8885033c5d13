"""Headless Debian Chromium for the page tests: the DOM after the scripts ran, or a screenshot.

``offline=True`` (the default) resolves every host name but 127.0.0.1 to nothing, as on an
air-gapped cluster: a page that needs a CDN stays blank. Each call uses a fresh profile folder.
The tests that use these skip when Chromium is not installed (CI's ``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium") or None
"""The Chromium binary, or None (then the browser tests skip)."""

OFFLINE_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9",
                 "--proxy-bypass-list=127.0.0.1")
"""No name resolves but 127.0.0.1, and anything else goes to a closed proxy port: no network."""


def _command(profile_parent: Path, offline: bool, virtual_time_ms: int) -> list[str]:
    assert CHROMIUM is not None, "Chromium is not installed"
    profile = tempfile.mkdtemp(prefix="chromium-", dir=profile_parent)  # a fresh profile each time
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
            f"--virtual-time-budget={virtual_time_ms}", *(OFFLINE_FLAGS if offline else ())]


def chromium_dom(url: str, profile_parent: Path, *, expect: str, offline: bool = True,
                 virtual_time_ms: int = 15000) -> str:
    """The DOM of ``url`` once its scripts ran (``--dump-dom``); asserts that it holds ``expect``."""
    result = subprocess.run([*_command(profile_parent, offline, virtual_time_ms), "--dump-dom", url],
                            capture_output=True, text=True, timeout=120)
    assert expect in result.stdout, (result.stdout[-3000:], result.stderr[-2000:])
    return result.stdout


def chromium_screenshot(url: str, png_path: Path, profile_parent: Path, *, width_pixels: int = 1280,
                        height_pixels: int = 900, offline: bool = True, virtual_time_ms: int = 15000) -> Path:
    """A ``width_pixels`` × ``height_pixels`` PNG of ``url`` once its scripts ran."""
    result = subprocess.run([*_command(profile_parent, offline, virtual_time_ms),
                             f"--window-size={width_pixels},{height_pixels}", f"--screenshot={png_path}", url],
                            capture_output=True, text=True, timeout=120)
    assert png_path.is_file(), result.stderr[-2000:]
    return png_path
