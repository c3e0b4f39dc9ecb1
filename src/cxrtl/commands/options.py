"""The option families that several commands share: one spelling, one help text, one default each.

A command adds a family with one call (``options.add_device(p)``), so ``--device`` reads the same in
``train``, ``evaluate``, ``predict``, ``serve`` and ``segment``. Progress bars are ``--no-progress`` everywhere
(``args.progress``), and the CLI turns them off by itself when stderr is not a terminal.
"""

from __future__ import annotations

import argparse

MODEL_HELP = (
    "run directory, bundle, checkpoint (.safetensors/.json), exported .onnx, or hf://OWNER/NAME[@REV]"
)
DATA_HELP = (
    "dataset root: the COVID-19 Radiography Database, Kermany's chest_xray, class folders, or a CSV manifest"
)
DEVICE_HELP = "auto, cpu, cuda or cuda:N (default auto: a CUDA GPU when there is one)"


def add_model(p: argparse.ArgumentParser, name: str = "model", help: str = MODEL_HELP) -> None:
    """The positional MODEL: anything :func:`cxrtl.model_ref.resolve_model` resolves."""
    p.add_argument(name, metavar="MODEL", help=help)


def add_data(p: argparse.ArgumentParser, required: bool = False, help: str = DATA_HELP) -> None:
    """``--data ROOT``."""
    p.add_argument("--data", metavar="ROOT", required=required, help=help)


def add_split(p: argparse.ArgumentParser, help: str) -> None:
    """``--split SPLIT.csv`` (what it does differs by command: say it in ``help``)."""
    p.add_argument("--split", metavar="SPLIT.csv", help=help)


def add_device(p: argparse.ArgumentParser, help: str = DEVICE_HELP, **kwargs) -> None:
    """``--device DEV``: auto, cpu, cuda, cuda:N."""
    p.add_argument("--device", metavar="DEV", help=help, **{"default": "auto", **kwargs})


def add_precision(p: argparse.ArgumentParser, choices, help: str, **kwargs) -> None:
    """``--precision``: the numerics of the forward passes."""
    p.add_argument("--precision", choices=choices, help=help, **kwargs)


def add_backend(p: argparse.ArgumentParser) -> None:
    """``--backend``: which runtime runs the model."""
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="torch, onnx (an .onnx file or a bundle's model.onnx; no torch needed) or auto (default: "
        "onnx for an .onnx file, torch otherwise)",
    )
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: one per core)")


def add_format(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str) -> None:
    """``--format``: how results are printed on stdout."""
    p.add_argument("--format", choices=choices, default=default, help=f"output format (default {default})")


def add_progress(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` -> ``args.progress`` False (bars are also off when stderr is not a terminal)."""
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (they are shown only when stderr is a terminal)",
    )


def progress_only_on_a_terminal(args: argparse.Namespace, is_terminal: bool) -> None:
    """Progress bars only on a terminal: redirected logs get no carriage-return lines."""
    if not is_terminal and hasattr(args, "func"):
        args.progress = False
