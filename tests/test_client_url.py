"""A wrong service URL (issue 23, item 2): a malformed one fails at once, an unreachable one says
where it retries and for how long, every few seconds, then gives up with what to check."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time

import pytest

from clipserve import client
from clipserve.client import ClipStream, ClipStreamError, ServiceURLError, check_service_url
from tests.service_helpers import REPO_ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("url", "message"), [
    ("127.0.0.1:8000", "service URL '127.0.0.1:8000' has no scheme: write 'http://127.0.0.1:8000'"),
    ("localhost:8000", "service URL 'localhost:8000' has no scheme: write 'http://localhost:8000'"),
    ("ftp://127.0.0.1:8000", "has the scheme 'ftp': use http:// or https://"),
    ("http://:8000", "service URL 'http://:8000' has no host"),
    ("http://127.0.0.1:99999", "service URL 'http://127.0.0.1:99999'"),
    ("http://127.0.0.1:80x0", "service URL 'http://127.0.0.1:80x0' is malformed"),
    ("http://127.0.0.1:8000/?x=1", "must be a base URL, without '?' or '#'"),
])
def test_a_malformed_url_is_refused_at_once(url: str, message: str) -> None:
    with pytest.raises(ServiceURLError, match=re.escape(message)):
        check_service_url(url)
    started = time.monotonic()
    with pytest.raises(ValueError, match=re.escape(message)):  # ServiceURLError is a ValueError too
        ClipStream(url, reconnect_timeout_seconds=60.0)
    assert time.monotonic() - started < 5.0  # not the 60 s of retries


@pytest.mark.parametrize(("url", "normal"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    (" https://clips.example:443/prefix/ ", "https://clips.example:443/prefix"),
    ("http://[::1]:8000", "http://[::1]:8000"),
])
def test_a_well_formed_url_is_kept(url: str, normal: str) -> None:
    assert check_service_url(url) == normal
    with ClipStream(url) as stream:
        assert stream.url == normal


def test_an_unreachable_service_is_retried_with_a_line_every_few_seconds(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens on the port: warnings name the URL, the reason and the time left; then a
    ClipStreamError says how long it tried and what to check."""
    monkeypatch.setattr(client, "RETRY_REPORT_INTERVAL_SECONDS", 0.5)
    url = f"http://127.0.0.1:{_free_port()}"
    caplog.set_level(logging.WARNING, logger="clipserve.client")
    with ClipStream(url, reconnect_timeout_seconds=5.0) as stream:
        with pytest.raises(ClipStreamError) as caught:
            next(stream)
    message = str(caught.value)
    assert f"could not attach to clipserve at {url} within 5 s (reconnect_timeout_seconds)" in message
    assert "ConnectError" in message and "Is `clipserve start` running there?" in message
    lines = [r.getMessage() for r in caplog.records if r.name == "clipserve.client"]
    assert len(lines) >= 3, lines  # at 0 s, then every 0.5 s at most (attempts at 0, 0.1, 0.3, 0.7, 1.5, 3.1 s)
    assert all(line.startswith(f"clipserve at {url} not reachable (ConnectError") for line in lines)
    left = [float(re.search(r"retrying for up to (\d+) s more", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert left[0] == 5.0 and left == sorted(left, reverse=True)
    assert "reconnect_timeout_seconds=5" in lines[0]


def test_trainer_cli_reports_a_bad_or_unreachable_server() -> None:
    """``python -m trainer --server 127.0.0.1:8000`` exits 2 with the message, before any retry; an
    unreachable one prints the retry line on stderr and gives up after ``--attach-timeout-seconds``."""
    flags = ["--profile", "cpu", "--backbone", "tiny", "--max-steps", "1", "--progress", "false", "--device", "cpu"]
    bad = subprocess.run([sys.executable, "-m", "trainer", "--server", "127.0.0.1:8000", *flags],
                         capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert bad.returncode == 2, bad.stderr
    assert "error: service URL '127.0.0.1:8000' has no scheme: write 'http://127.0.0.1:8000'" in bad.stderr
    assert "Traceback" not in bad.stderr
    url = f"http://127.0.0.1:{_free_port()}"
    unreachable = subprocess.run([sys.executable, "-m", "trainer", "--server", url, "--attach-timeout-seconds", "2",
                                  *flags], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert unreachable.returncode == 2, unreachable.stderr
    assert f"clipserve at {url} not reachable (ConnectError" in unreachable.stderr
    assert "retrying for up to 2 s more" in unreachable.stderr
    assert f"error: could not attach to clipserve at {url} within 2 s" in unreachable.stderr
