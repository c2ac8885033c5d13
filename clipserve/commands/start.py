"""``clipserve start``: index the dataset if needed, then serve batches and the control plane.

Every flag is generated from a field of ``clipserve.settings.ServiceConfig`` (its help is the
field's description) and the value can also be
given as an environment variable ``CLIPSERVE_<FIELD>`` or in a ``--config`` file (TOML/JSON, flat
keys = field names). Priority: flags, environment, config file, defaults.

Runs until SIGINT or SIGTERM, then shuts down cleanly: every consumer is detached (its ring
segment unlinked, its decode workers joined) before the process exits with status 0.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipserve.errors import ConfigError
from clipserve.config_cli import add_model_arguments, model_overrides
from clipserve.settings import ENV_PREFIX, ServiceConfig, load_service_config

if TYPE_CHECKING:
    from clipserve.service import ServiceState

HELP = "serve clip batches to trainers (shared memory / HTTP) and the REST control plane"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    # one flag per ServiceConfig field, help from its description; fields not given stay out of the
    # namespace, so only flags on the command line override the environment and config file
    add_model_arguments(parser, ServiceConfig, env_prefix=ENV_PREFIX)
    parser.add_argument("--config", dest="config_file", type=Path, default=None,
                        help="config file, TOML or JSON, flat keys named like the fields (e.g. batch_size = 8)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                        help="no progress bar while indexing (the bar goes to stderr)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return model_overrides(args, ServiceConfig.model_fields)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = (f"; another program (another clipserve?) listens there: pick a free port with --port 0 "
                    f"(the address is printed once serving) or another number such as --port {port + 1}")
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from clipserve.api.app import create_app
    from clipserve.priority import lower_cpu_priority
    from clipserve.service import ServiceState, build_service_index
    from clipserve.transport.ring import cleanup_stale_segments

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_service_config(_overrides(args), args.config_file)
    sock = _bind(config.host, config.port)  # fail fast when the port is taken, before indexing
    port = sock.getsockname()[1]
    config = config.as_running(port)  # /v1/info reports the bound port and the workers that run
    try:
        print(f"clipserve: indexing {config.dataset}/{config.split} at {config.root} ...", file=sys.stderr, flush=True)
        index = build_service_index(config, progress=getattr(args, "progress", True))
        # this process has created no ring yet: entries named with its pid are a crashed
        # predecessor's (containers reuse pids); ServiceState removes those of dead pids
        cleanup_stale_segments(this_process_is_new=True)
        state = ServiceState(config, index, data_plane_process=True)
    except BaseException:
        sock.close()
        raise
    # after the data-plane process started (it keeps this priority): threads started from now on
    # (uvicorn's, the request threads, the contact-sheet pool) inherit the lower one
    lower_cpu_priority(by=config.control_plane_nice)
    url = _url(config.host, port)
    ready_line = f"clipserve: serving {len(index.records)} videos at {url} (backend {state.backend}); Ctrl-C stops"

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                print(ready_line, flush=True)

    app = create_app(config, state_factory=lambda: state)
    server = _Server(
        uvicorn.Config(
            app,
            log_level="warning" if args.log_level != "debug" else "debug",
            access_log=args.log_level == "debug",
            timeout_graceful_shutdown=5,
            lifespan="on",
        )
    )
    # uvicorn re-raises a captured signal after its graceful shutdown; these no-op handlers let
    # the process then exit normally (status 0) instead of dying from that re-raised signal.
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    watchdog = threading.Thread(target=_stop_when_data_plane_dies, args=(state, server), daemon=True,
                                name="clipserve-data-plane-watchdog")
    watchdog.start()
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        state.close()  # idempotent: normally done by the lifespan already
        sock.close()
    if not server.started:
        print("clipserve start: error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    if not state.data_plane_alive() and not received:
        print("clipserve start: error: the data-plane process exited unexpectedly; stopped serving",
              file=sys.stderr)
        return 1
    print("clipserve: stopped", file=sys.stderr, flush=True)
    return 0


#: How often the watchdog checks that the data-plane process runs, seconds.
WATCHDOG_INTERVAL_SECONDS = 1.0


def _stop_when_data_plane_dies(state: ServiceState, server: Any) -> None:
    """Stop serving when the data-plane process is gone (killed, OOM): a supervisor restarts us."""
    while not server.should_exit:
        time.sleep(WATCHDOG_INTERVAL_SECONDS)
        if not state.data_plane_alive() and not server.should_exit:
            logging.getLogger(__name__).error("the data-plane process exited unexpectedly; stopping the service")
            server.should_exit = True
