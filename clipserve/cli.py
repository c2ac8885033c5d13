"""``clipserve`` command line: one subcommand per module in ``clipserve/commands/``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from pydantic import ValidationError

from clipserve.config_cli import format_validation_error
from clipserve.errors import ClipserveError

COMMANDS = {
    "make-sample": "clipserve.commands.make_sample",
    "index": "clipserve.commands.index",
    "plan": "clipserve.commands.plan",
    "start": "clipserve.commands.start",
}


def _load(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        command = sub.add_parser(name, help=module.HELP, description=module.HELP,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ClipserveError as exc:
        print(f"clipserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # settings checked outside a command's own formatting: the same one line
        print(f"clipserve {args.command}: error: {format_validation_error(exc, subject='settings')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipserve {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
