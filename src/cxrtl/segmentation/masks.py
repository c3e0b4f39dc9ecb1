"""Masks for a whole dataset kept outside it: ``MASK_DIR/<image's path in the dataset>.png``, and the
split's ``mask_path`` column filled from such a folder (``cxrtl data masks``, ``cxrtl data split --masks``)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..data.records import DatasetIndex, Record
from ..errors import CxrtlError


def mask_file(mask_dir: Path, record: Record) -> Path:
    """Where the mask of ``record`` lives in a mask folder: its dataset path with a .png suffix."""
    return mask_dir / Path(record.path).with_suffix(".png")


def write_dataset_masks(
    root: str | os.PathLike,
    seg_run: str | os.PathLike,
    out: str | os.PathLike,
    device: str = "auto",
    only: set[str] | None = None,
    **kw,
) -> tuple[int, list[tuple[str, str]]]:
    """Predict a mask for every image of the dataset at ``root`` into ``out`` -> (written, failures).

    ``only``: the dataset-relative paths to segment (e.g. a subsampled split's), instead of every image.
    """
    from ..data.sources import load_dataset
    from .predict import Segmenter, segment_files

    index = load_dataset(root)
    out_dir = Path(out).expanduser().resolve()
    if out_dir == index.root.resolve() or index.root.resolve() in out_dir.parents:
        raise CxrtlError(
            f"--out {out_dir} is inside the dataset {index.root}; write the masks to another folder"
        )
    from ..fsutil import ensure_dir
    from .hygiene import write_mask_source

    seg = Segmenter.load(seg_run, device)
    records = [r for r in index.records if only is None or r.path in only]
    plan = [(index.abspath(r.path), Path(r.path).with_suffix(".png")) for r in records]
    result = segment_files(seg, plan, out_dir, **kw)
    write_mask_source(ensure_dir(out_dir), seg_run, seg.meta)
    return result


def attach_masks(index: DatasetIndex, split: dict[str, list[Record]], mask_dir: str | os.PathLike) -> dict:
    """The split with each record's ``mask_path`` set to its (absolute) mask file in ``mask_dir``.

    Raises a one-line error counting the images without a mask, so a stale or foreign folder is caught.
    Warns when the segmenter that wrote the folder (`cxrtl data masks`) trained on any test image of ``split``.
    """
    from .hygiene import read_mask_source, warn_test_overlap

    folder = Path(mask_dir).expanduser().resolve()
    if not folder.is_dir():
        raise CxrtlError(f"mask folder {mask_dir} does not exist; write it with `cxrtl data masks`")
    records = [r for recs in split.values() for r in recs]
    unmatched = [r.path for r in records if not mask_file(folder, r).is_file()]
    if unmatched:
        raise CxrtlError(
            f"{len(unmatched)} of {len(records)} images have no mask in {folder} (e.g. {unmatched[0]}); "
            f"write them with `cxrtl data masks {index.root} --segmenter SEG_RUN --out {folder}`"
        )
    source = read_mask_source(folder)
    if source:
        test = [str(index.abspath(r.path).resolve()) for r in split.get("test", [])]
        warn_test_overlap(source, test, f"the split of {index.root}")
    return {
        name: [replace(r, mask_path=str(mask_file(folder, r))) for r in recs] for name, recs in split.items()
    }
