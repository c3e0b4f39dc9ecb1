"""cxrtl: transfer learning on chest radiographs, with the checks that make its numbers trustworthy.

The public API, for notebooks and scripts (the ``cxrtl`` command is a thin shell over the same calls)::

    import cxrtl

    index = cxrtl.load_dataset("COVID-19_Radiography_Dataset")      # records of a dataset root
    split = cxrtl.make_split(index, seed=2022)                        # seeded, stratified
    summary = cxrtl.train(cxrtl.TrainConfig(data=..., out="runs/a"))  # a run directory
    metrics = cxrtl.evaluate("runs/a", "COVID-19_Radiography_Dataset")
    probs = cxrtl.Predictor.from_checkpoint("runs/a").predict_proba(["x.png"])

Names load on first use, so ``import cxrtl`` stays cheap and never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__  # written once, in _version.py (pyproject.toml reads it there)

# public name -> module that defines it
_EXPORTS = {
    # data
    "load_dataset": "cxrtl.data.sources",
    "make_split": "cxrtl.data.splits",
    "read_split_csv": "cxrtl.data.splits",
    "write_split_csv": "cxrtl.data.splits",
    "synthesize": "cxrtl.data.synthetic",
    "Preprocess": "cxrtl.data.preprocess",
    "DatasetIndex": "cxrtl.data.records",
    "Record": "cxrtl.data.records",
    # model and training
    "create_model": "cxrtl.transfer",
    "create_loss": "cxrtl.training.losses",
    "TrainConfig": "cxrtl.config",
    "train": "cxrtl.training.train",
    "load_checkpoint": "cxrtl.checkpoint",
    # evaluation
    "evaluate": "cxrtl.evaluation.evaluate",
    "compute_metrics": "cxrtl.evaluation.metrics",
    # inference
    "Predictor": "cxrtl.inference.predict",
    "export_onnx": "cxrtl.inference.export",
    # integrity
    "check_split": "cxrtl.integrity.leakage",
    "dedup_dataset": "cxrtl.integrity.dedup",
    # the paper
    "reproduce": "cxrtl.paper.reproduce",
    "ReproduceOptions": "cxrtl.paper.reproduce",
    # errors and typed results
    "CxrtlError": "cxrtl.errors",
    "RunSummary": "cxrtl.results",
    "Metrics": "cxrtl.results",
    "ReproductionRun": "cxrtl.results",
    "ReproductionResults": "cxrtl.results",
}

__all__ = [  # written out (not derived from _EXPORTS) so linters and IDEs can read it
    "__version__",
    "load_dataset",
    "make_split",
    "read_split_csv",
    "write_split_csv",
    "synthesize",
    "Preprocess",
    "DatasetIndex",
    "Record",
    "create_model",
    "create_loss",
    "TrainConfig",
    "train",
    "load_checkpoint",
    "evaluate",
    "compute_metrics",
    "Predictor",
    "export_onnx",
    "check_split",
    "dedup_dataset",
    "reproduce",
    "ReproduceOptions",
    "CxrtlError",
    "RunSummary",
    "Metrics",
    "ReproductionRun",
    "ReproductionResults",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily below
    from .checkpoint import load_checkpoint
    from .config import TrainConfig
    from .data.preprocess import Preprocess
    from .data.records import DatasetIndex, Record
    from .data.sources import load_dataset
    from .data.splits import make_split, read_split_csv, write_split_csv
    from .data.synthetic import synthesize
    from .errors import CxrtlError
    from .evaluation.evaluate import evaluate
    from .evaluation.metrics import compute_metrics
    from .inference.export import export_onnx
    from .inference.predict import Predictor
    from .integrity.dedup import dedup_dataset
    from .integrity.leakage import check_split
    from .paper.reproduce import ReproduceOptions, reproduce
    from .results import Metrics, ReproductionResults, ReproductionRun, RunSummary
    from .training.losses import create_loss
    from .training.train import train
    from .transfer import create_model


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrtl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
