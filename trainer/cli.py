"""``python -m trainer`` entry point. Flags are parsed before torch is imported, so a typo fails fast."""

from __future__ import annotations

import sys

from trainer.config import ConfigError, help_text, parse_args


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer --objective … --server URL [--key value …]``; returns the exit status
    (0 done, 2 bad flags / unreachable server / missing checkpoint)."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    try:
        config = parse_args(argv)
        if not config.server:
            raise ConfigError("--server is required: the clipserve URL (e.g. http://127.0.0.1:8000), or 'synthetic'")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from trainer import dist as tdist
    from trainer.train import train

    try:
        train(config)
    except (ConfigError, FileNotFoundError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # clipserve's own errors (ClipserveError subclasses) are user-facing too
        if any(cls.__name__ == "ClipserveError" for cls in type(exc).__mro__):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        tdist.destroy()
    return 0
