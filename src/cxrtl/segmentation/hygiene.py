"""Test-set hygiene between a segmenter and a classifier that uses its masks.

A segmenter that trained (or picked its epoch) on a classifier's test images has seen them with their true
masks, so the masks it predicts there are better than on new images and the classifier's masked test
results are optimistic. The segmenter's checkpoint records its ``data_root`` and ``split_csv``; these
functions compare the images it saw (train and validation) with a classifier's test images, by absolute
path, and warn once naming the overlap. ``cxrtl reproduce`` avoids it by construction (one COVID split).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SEEN = ("train", "val")
MASKS_FILE = ".cxrtl-masks.json"  # written by `cxrtl data masks` in its mask folder: which segmenter


def _abs(root: str | os.PathLike, path: str) -> str:
    return str((Path(root) / path).resolve())


def split_paths(split_csv: str | os.PathLike, root: str | os.PathLike, subsets: Iterable[str]) -> set[str]:
    """Absolute paths of the images of ``subsets`` in a split CSV whose paths are relative to ``root``."""
    wanted = set(subsets)
    with open(split_csv, newline="") as fh:
        return {_abs(root, r["path"]) for r in csv.DictReader(fh) if r.get("split") in wanted}


def seen_by(meta: dict) -> set[str] | None:
    """The images a segmenter trained or validated on, from its checkpoint metadata; None when unrecorded."""
    root, split_csv = meta.get("data_root"), meta.get("split_csv")
    if not root or not split_csv or not Path(split_csv).is_file():
        return None
    try:
        return split_paths(split_csv, root, SEEN)
    except (OSError, KeyError, csv.Error):
        return None


def warn_test_overlap(meta: dict, test_images: Iterable[str], what: str) -> int:
    """Warn once when the segmenter of ``meta`` saw any of ``test_images`` (absolute paths) -> the count."""
    seen = seen_by(meta)
    if not seen:
        return 0
    overlap = sorted(set(test_images) & seen)
    if overlap:
        log.warning(
            "the segmenter trained on %d test image(s) of %s (e.g. %s): its masks there are optimistic, so "
            "masked test results are too; train the segmenter on the classifier's split "
            "(`cxrtl segment train --split SPLIT.csv`) so its test images stay unseen",
            len(overlap),
            what,
            overlap[0],
        )
    return len(overlap)


def classifier_test_images(weights: str | os.PathLike) -> set[str] | None:
    """A classifier run's test images (absolute paths), from its ``split.csv`` and the data root in its
    checkpoint's config; None when either is missing (an export or a bundle)."""
    import json

    weights = Path(weights)
    split_csv, meta_file = weights.parent / "split.csv", weights.with_suffix(".json")
    try:
        root = (json.loads(meta_file.read_text()).get("config") or {}).get("data")
        return split_paths(split_csv, root, ("test",)) if root and split_csv.is_file() else None
    except (OSError, ValueError, KeyError, csv.Error):
        return None


def check_classifier(seg_meta: dict, weights: str | os.PathLike) -> int:
    """Warn when the segmenter saw the test images of the classifier run holding ``weights`` -> the count."""
    test = classifier_test_images(weights)
    return warn_test_overlap(seg_meta, test, f"classifier {Path(weights).parent}") if test else 0


def read_mask_source(mask_dir: str | os.PathLike) -> dict | None:
    """The segmenter metadata `cxrtl data masks` recorded in a mask folder, or None (e.g. hand-made masks)."""
    import json

    try:
        return json.loads((Path(mask_dir) / MASKS_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_mask_source(mask_dir: Path, seg_run: str | os.PathLike, seg_meta: dict) -> Path:
    """Record in the mask folder which segmenter wrote it and what it trained on (for `split --masks`)."""
    from ..fsutil import write_json

    info = {k: seg_meta.get(k) for k in ("data_root", "split_csv", "encoder", "image_size")}
    return write_json(mask_dir / MASKS_FILE, {"segmenter": str(Path(seg_run).resolve()), **info})
