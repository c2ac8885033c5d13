"""Security of the real service: the loopback default bind, the token on a non-loopback bind (REST
and a trainer's ``ClipStream``), request parameters never used as file paths, owner-only shared
memory, and a schemathesis run over the OpenAPI schema that must find no 5xx.

Covered elsewhere (referenced in docs/reliability.md, not repeated): the token on every route in
process (test_api.py ``test_token_protects_every_route_but_healthz``), refusing a public host
without a token (test_api.py ``test_start_refuses_a_public_host_without_token``,
``test_bad_settings_raise_config_error_naming_the_field``), segment 0600 / socket dir 0700
(test_ring.py ``test_segment_and_socket_are_owner_only``, test_api.py
``test_shm_attach_creates_a_private_ring_and_detach_removes_it``), the ring's connect token
(test_ring.py ``test_wrong_token_is_refused_and_right_one_still_connects``).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipserve.api.app import create_app
from clipserve.settings import ServiceConfig, load_service_config
from tests.service_helpers import (
    READY_PATTERN,
    REPO_ROOT,
    SERVICE_SETTINGS,
    RunningService,
    _clean_env,
    make_tiny_dataset,
    service_args,
    stop_service,
)

with warnings.catch_warnings():  # starlette warns once, at import, that it prefers httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(240)

TOKEN = "hardening-token-0123456789"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("security") / "k400")


def _launch(root: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None) -> RunningService:
    """``clipserve start`` with exactly the given host/token flags (none: the defaults)."""
    command = [sys.executable, "-m", "clipserve", "start", "--dataset", "k400", "--root", str(root), "--port", "0",
               "--no-progress", *service_args(), *extra]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                   env={**_clean_env(), **(env or {})}, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        match = READY_PATTERN.search(log_path.read_text(errors="replace"))
        if match:
            url = match.group(2).rstrip("/")
            return RunningService(process, url, int(url.rsplit(":", 1)[1]), log_path)
        time.sleep(0.1)
    stop_service(process)
    raise RuntimeError(f"service did not start:\n{log_path.read_text(errors='replace')}")


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the listening TCP sockets on ``port`` (Linux /proc/net/tcp, IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port_hex = fields[1].split(":")
        if int(port_hex, 16) == port and fields[3] == "0A":  # LISTEN
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.fixture(scope="module")
def default_service(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = _launch(dataset, tmp_path_factory.mktemp("sec-default") / "service.log")
    try:
        yield running
    finally:
        stop_service(running.process)


@pytest.fixture(scope="module")
def public_service(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """Bound to every interface (0.0.0.0) with the token given as CLIPSERVE_TOKEN."""
    running = _launch(dataset, tmp_path_factory.mktemp("sec-public") / "service.log", "--host", "0.0.0.0",
                      env={"CLIPSERVE_TOKEN": TOKEN})
    running.url = running.url.replace("0.0.0.0", "127.0.0.1")
    try:
        yield running
    finally:
        stopped = stop_service(running.process)
    assert stopped.status == 0


def test_the_default_bind_is_loopback_only(default_service: RunningService) -> None:
    assert ServiceConfig.model_fields["host"].default == "127.0.0.1"
    assert "http://127.0.0.1:" in default_service.log()
    assert _listening_addresses(default_service.port) == {"127.0.0.1"}
    assert httpx.get(default_service.url + "/v1/info", timeout=30).json()["config"]["token_required"] is False


def _routes(config: ServiceConfig) -> list[tuple[str, str]]:
    """(method, concrete path) of every route in the app's OpenAPI schema plus the unlisted ones
    (the page and the metrics), path parameters filled in."""
    paths = create_app(config).openapi()["paths"]
    out = {(method.upper(), path) for path, item in paths.items() for method in item}
    out |= {("GET", "/"), ("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/docs")}
    return sorted((m, p.replace("{video_index}", "0").replace("{consumer_id}", "c0abc")) for m, p in out)


def test_a_public_bind_checks_the_token_on_every_route_but_healthz(public_service: RunningService, dataset: Path) -> None:
    assert _listening_addresses(public_service.port) == {"0.0.0.0"}
    routes = _routes(load_service_config({"root": dataset, **SERVICE_SETTINGS}))
    assert len(routes) >= 10 and ("GET", "/healthz") in routes
    with httpx.Client(base_url=public_service.url, timeout=30) as client:
        for method, path in routes:
            if path == "/healthz":
                assert client.request(method, path).status_code == 200
                continue
            for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {TOKEN}"}):
                response = client.request(method, path, headers=headers, json={})
                assert response.status_code in (401, 403, 404), (method, path, response.status_code)
                assert response.status_code != 200
                if path not in ("/openapi.json", "/docs"):  # not served at all with a token (404)
                    assert response.status_code == 401, (method, path, headers, response.status_code)
        good = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/", "/v1/info", "/v1/stats", "/metrics", "/v1/videos", "/v1/videos/0", "/v1/videos/0/plan"):
            assert client.get(path, headers=good).status_code == 200, path
        assert TOKEN not in client.get("/v1/info", headers=good).text  # the token is never echoed
        assert TOKEN not in public_service.log()


def test_a_trainer_stream_sends_the_token(public_service: RunningService, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipserve.client import ClipStream, ClipStreamError

    refused = ClipStream(public_service.url, token="", reconnect_timeout_seconds=0, timeout_seconds=30)
    with pytest.raises(ClipStreamError, match="401"):
        next(refused)
    refused.close()
    # the trainer's own entry point (it passes no token: CLIPSERVE_TOKEN from the environment)
    monkeypatch.setenv("CLIPSERVE_TOKEN", TOKEN)
    from trainer.data import open_clip_stream

    for transport in ("shm", "http"):
        stream = open_clip_stream(public_service.url, rank=0, world_size=1, transport=transport)
        try:
            batches = [(b.epoch, b.step, tuple(b.clips.shape)) for _, b in zip(range(2), stream)]
            if transport == "shm":  # the ring of this consumer is private to this user
                consumer_id = stream.consumer_id
                (segment,) = [p for p in Path("/dev/shm").iterdir() if p.name.endswith(f"-{consumer_id}")]
                assert stat.S_IMODE(segment.stat().st_mode) == 0o600 and segment.stat().st_uid == os.getuid()
                socket_dirs = [p for p in Path("/dev/shm").iterdir() if p.name.startswith(segment.name + "-") and p.is_dir()]
                assert socket_dirs and all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in socket_dirs)
        finally:
            stream.close()
        shape = (2, 2, 3, 4, 32, 32)
        assert batches == [(0, 0, shape), (0, 1, shape)], transport


# ----- request parameters never reach the filesystem ----------------------------------------------

CANARY = "zz-canary-etc-passwd"
_opened: list[str] = []
_watching = threading.Event()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching.is_set() and event in ("open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.mkdir",
                                        "shutil.rmtree", "os.chmod", "clipserve.open_video"):
        if args and isinstance(args[0], (str, bytes, os.PathLike)):
            _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _spy_av_open(original: Any) -> Any:
    """``av.open`` that records its file argument (FFmpeg opens files in C, unseen by audit hooks)."""

    def av_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if _watching.is_set() and isinstance(file, (str, bytes, os.PathLike)):
            _opened.append(os.fsdecode(file))
        return original(file, *args, **kwargs)

    return av_open

TRAVERSALS = [
    ("GET", f"/v1/videos/..%2F..%2F{CANARY}"),
    ("GET", f"/v1/videos/..%2F..%2F{CANARY}/plan"),
    ("GET", f"/v1/videos/%2e%2e%2f{CANARY}/clips.png"),
    ("GET", f"/v1/videos/0/plan?epoch=..%2F{CANARY}"),
    ("GET", f"/v1/videos/0/clips.png?seed=/{CANARY}"),
    ("GET", f"/v1/videos?offset=../../{CANARY}"),
    ("GET", f"/v1/consumers/..%2F..%2F{CANARY}/batches"),
    ("GET", f"/v1/consumers/{CANARY.replace('-', '_')}%2F..%2F..%2Fx/batches"),
    ("DELETE", f"/v1/consumers/..%2F{CANARY}"),
    ("DELETE", "/v1/consumers/%00"),
    ("GET", f"/static/../../{CANARY}"),
    ("GET", f"/..%2F..%2F{CANARY}"),
    ("GET", f"/v1/videos/0/clips.png/../../../{CANARY}"),
    ("POST", "/v1/consumers"),
]


@pytest.fixture(scope="module")
def client(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    cache = tmp_path_factory.mktemp("sec-cache") / "index.sqlite"
    config = load_service_config({"root": dataset, **SERVICE_SETTINGS, "index_cache_path": cache})
    import av

    with pytest.MonkeyPatch.context() as patch, TestClient(create_app(config)) as test_client:
        patch.setattr(av, "open", _spy_av_open(av.open))
        yield test_client


@pytest.mark.parametrize(("method", "path"), TRAVERSALS)
def test_path_traversal_attempts_get_4xx_and_open_no_file(client: TestClient, method: str, path: str) -> None:
    body = {"transport": f"../../{CANARY}", "rank": f"/{CANARY}"} if method == "POST" else None
    _opened.clear()
    _watching.set()
    try:
        response = client.request(method, path, json=body, headers={"X-Path": f"../../{CANARY}"})
    finally:
        _watching.clear()
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:300])
    assert not [p for p in _opened if CANARY in p], _opened


def test_the_audit_hook_sees_the_files_a_request_opens(client: TestClient) -> None:
    """The check above can fail: a contact sheet opens its video file (in a sheet process, announced by
    the ``clipserve.open_video`` audit event), and the spies see that."""
    _opened.clear()
    _watching.set()
    try:
        assert client.get("/v1/videos/0/clips.png").status_code == 200
    finally:
        _watching.clear()
    record = client.get("/v1/videos/0").json()["record"]
    assert [p for p in _opened if p.endswith(Path(record["relative_path"]).name)], _opened


def test_path_parameters_are_typed_not_free_strings(client: TestClient) -> None:
    """Every path/query parameter in the schema is an integer, or a string with a closed pattern."""
    schema = client.get("/openapi.json").json()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                spec = parameter["schema"]
                options = spec.get("anyOf", [spec])
                for option in options:
                    if option.get("type") == "string" and parameter["name"] != "token":
                        assert option.get("pattern") or option.get("enum"), (method, path, parameter)


# ----- schemathesis over the OpenAPI schema ------------------------------------------------------

#: Valid requests to this operation attach a consumer (decode workers and a ring per call; covered
#: by test_api.py and test_service.py): only schema-violating (negative) requests are sent to it.
NEGATIVE_ONLY = {("POST", "/v1/consumers")}
EXAMPLES_PER_OPERATION = 10


def _fuzz(operation: Any, mode: Any, url: str, failures: list[str], *, detach_taken: bool, label: str) -> int:
    """Send ``EXAMPLES_PER_OPERATION`` generated requests; append every 5xx to ``failures``; return the count."""
    from hypothesis import HealthCheck, given, settings

    sent = 0

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=url, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{label} {case.path_parameters} {case.query} {case.body!r:.200}: "
                            f"{response.status_code} {response.text[:200]}")
        if detach_taken and response.status_code == 201:  # a negative case the service accepted
            httpx.delete(f"{url}/v1/consumers/{response.json()['consumer_id']}", timeout=30)

    run()
    return sent


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(default_service: RunningService) -> None:
    """Positive and negative requests for every operation of the schema: none may get a 5xx."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(default_service.url + "/openapi.json")
    failures: list[str] = []
    tried: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if key in NEGATIVE_ONLY and mode is GenerationMode.POSITIVE:
                continue
            label = f"{key[0]} {key[1]} {mode.value}"
            tried[label] = 0

            try:
                tried[label] = _fuzz(operation, mode, default_service.url, failures,
                                     detach_taken=key in NEGATIVE_ONLY, label=label)
            except Exception as exc:  # e.g. no negative case exists for an operation without parameters
                if type(exc).__name__ not in ("Unsatisfiable", "SkipTest", "Skipped"):
                    raise
    total = sum(tried.values())
    print(f"schemathesis: {total} requests over {len(tried)} (operation, mode) pairs: {tried}")
    assert len({label.rsplit(" ", 1)[0] for label in tried}) >= 10, tried
    assert total >= 100, tried
    assert not failures, failures
    assert httpx.get(default_service.url + "/healthz", timeout=30).status_code == 200
    assert httpx.get(default_service.url + "/v1/stats", timeout=30).json()["consumers"] == []


def test_the_token_is_not_in_the_error_of_a_bad_config() -> None:
    from clipserve.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_service_config({"root": "/data", "token": TOKEN, "batch_size": 0})
    assert TOKEN not in str(info.value)
