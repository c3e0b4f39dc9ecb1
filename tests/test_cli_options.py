"""The command line speaks one language: each shared option has one spelling, one help text and one default,
and every option of every command says what it does."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from cxrtl.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))
LEAVES = [
    (path, p)
    for path, p in COMMANDS
    if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
]


def _options(parser):
    return [
        a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]


@pytest.mark.parametrize("path, parser", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_option_has_help_and_no_empty_default(path, parser):
    assert [a.dest for a in _options(parser) if not a.help] == []
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = out.getvalue()
    for noise in (
        "(default: None)",
        "(default: True)",
        "(default: False)",
        "(default: the dataset's) (default",
    ):
        assert noise not in text


@pytest.mark.parametrize("flag", ["--device", "--no-progress", "--backend", "--threads"])
def test_a_shared_option_is_spelt_and_explained_once(flag):
    seen = {}
    for path, parser in LEAVES:
        for action in _options(parser):
            if flag in action.option_strings:
                seen[" ".join(path)] = (
                    action.dest,
                    action.metavar,
                    action.help if flag != "--device" else None,
                )
    assert len(seen) >= 2, seen
    assert len(set(seen.values())) == 1, seen  # one dest, metavar and help text wherever it appears


def test_progress_is_one_switch_everywhere():
    for path, parser in LEAVES:
        for action in _options(parser):
            if "progress" in action.dest:
                assert action.option_strings == ["--no-progress"] and action.dest == "progress", path


def test_data_lists_all_its_subcommands():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["data", "--help"])
    for name in ("synth", "check", "split", "cache", "masks", "dedup"):
        assert name in out.getvalue()
