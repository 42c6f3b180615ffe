"""The ``creativity-fast`` command line: one sub-command per module in ``creativity_fast.commands``.

Errors in the arguments or the inputs print one line (``creativity-fast: error: ...``)
and exit with status 2 (set ``CREATIVITY_FAST_DEBUG=1`` for the traceback); an interrupt exits with 130 after the command has saved
what it finished.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

# Modules that provide sub-commands, in the order `--help` lists them. A module
# that is missing (an optional part not installed) is skipped.
COMMAND_MODULES = ("sample", "analyze", "attribute", "sweep", "train", "calibrate", "compare")


class UsageError(Exception):
    """A user error detected by a command: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="creativity-fast",
        description="Exact equivariant local score machines: sample, analyze, sweep, calibrate.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"creativity_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if os.environ.get("CREATIVITY_FAST_DEBUG"):
            raise
        print(f"creativity-fast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("creativity-fast: interrupted; finished work was saved (rerun the same command to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
