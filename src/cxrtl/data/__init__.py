"""The dataset layer: dataset root on disk -> records -> split -> uint8 cache -> torch datasets.

Names are imported lazily so that ``import cxrtl.data.image_io`` (e.g. in a worker) does not pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Record": "records",
    "Skipped": "records",
    "DatasetIndex": "records",
    "SPLITS": "records",
    "Preprocess": "preprocess",
    "normalize_batch": "preprocess",
    "load_gray": "image_io",
    "ImageReadError": "image_io",
    "apply_mask": "image_io",
    "prepare_image": "image_io",
    "prepare_mask": "image_io",
    "load_dataset": "sources",
    "default_ratios": "splits",
    "make_split": "splits",
    "write_split_csv": "splits",
    "read_split_csv": "splits",
    "build_cache": "cache",
    "ImageCache": "cache",
    "default_cache_dir": "cache",
    "check_masks": "cache",
    "CachedDataset": "dataset",
    "PreparedData": "dataset",
    "prepare_data": "dataset",
    "synthesize": "synthetic",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrtl.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
