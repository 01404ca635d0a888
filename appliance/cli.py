"""The `appliance` command line: one argparse sub-command group per module in appliance/commands/.

Errors a user can fix are printed as one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module exposes register(subparsers); a registered parser sets `func(args) -> int | None`.
COMMAND_MODULES = [
    "appliance.commands.generate",
    "appliance.commands.bench",
    "appliance.commands.serve",
    "appliance.commands.admin",
    "appliance.commands.demo",
    "appliance.commands.ingest",
    "appliance.commands.eval",
    "appliance.commands.dashboard",
    "appliance.commands.models",
]


class UserError(Exception):
    """An error whose message is the whole story for the user (CLI prints it as one line)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="Single-node RAG-serving appliance.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except (UserError, ValueError, FileNotFoundError, PermissionError, OSError) as exc:
        print(f"appliance: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    main()
