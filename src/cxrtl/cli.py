"""The ``cxrtl`` command line: a thin shell over the library.

Each area registers its own subcommands from ``cxrtl.commands.<area>``; this file only wires them up and
turns a :class:`~cxrtl.errors.CxrtlError` into one line on stderr and exit code 2. Any other exception is
one line too (its type and message, exit 1), and its traceback with ``-v``: the library itself never
swallows it, so the tests, which call the library, still fail on it.
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
    "listen",
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


def _parsers_by_command(parser: argparse.ArgumentParser) -> dict:
    """Each command's function -> its own parser (for ``cxrtl data split``, the ``split`` parser)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if sub._defaults.get("func") is not None:
                    found[sub._defaults["func"]] = sub
                found.update(_parsers_by_command(sub))
    return found


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is refused by its own command, with the closest option it has."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if extra:
        own = _parsers_by_command(parser).get(getattr(args, "func", None), parser)
        options = [o for a in own._actions for o in a.option_strings if o.startswith("--")]
        guess = next(
            (difflib.get_close_matches(e.split("=")[0], options, n=1) for e in extra if e.startswith("-")), []
        )
        hint = f"; did you mean {guess[0]}?" if guess else f"; see cxrtl {args.command} --help"
        own.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
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
    except Exception as exc:  # an unforeseen failure (a dependency's): one line, the traceback with -v
        if args.verbose:
            raise
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"cxrtl: error: {type(exc).__name__}: {text}; run with -v for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
