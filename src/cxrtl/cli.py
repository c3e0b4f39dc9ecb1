"""The ``cxrtl`` command line: a thin shell over the library.

Each area registers its own subcommands from ``cxrtl.commands.<area>``; this file only wires them up and
turns a :class:`~cxrtl.errors.CxrtlError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__
from .commands.options import progress_only_on_a_terminal
from .errors import CxrtlError
from .logs import configure_logging

# Each module exposes ``register(subparsers)``; a parser's ``func(args) -> int`` runs the command.
COMMAND_MODULES = (
    "data",
    "train",
    "evaluate",
    "compare",
    "predict",
    "export",
    "push",
    "reproduce",
    "serve",
    "segment",
    "migrate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrtl",
        description="Transfer learning on chest radiographs (research tool, not a medical device).",
    )
    parser.add_argument("--version", action="version", version=f"cxrtl {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages, and decoder libraries' details"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"cxrtl.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    progress_only_on_a_terminal(args, sys.stderr.isatty())
    configure_logging(args.verbose)  # decoder libraries' tracebacks only with -v
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CxrtlError as exc:
        print(f"cxrtl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cxrtl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cxrtl data dedup ROOT | head`: the reader left, which is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except MemoryError:
        print("cxrtl: error: out of memory; lower --batch-size or --image-size", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
