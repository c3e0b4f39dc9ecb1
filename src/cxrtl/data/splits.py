"""Deterministic train/val/test splits: seeded, stratified by class, optionally grouped by patient or official.

The paper's text gives 0.7/0.15/0.15 for the COVID database and 0.7/0.2/0.1 for Kermany; the authors'
notebook actually used an unstratified 0.7/0.2/0.1 ``random_split`` (seed 2022) for both. The defaults
follow the text; pass ``ratios=(0.7, 0.2, 0.1)`` for the notebook's proportions.

A split can also have a calibration subset, on which ``cxrtl evaluate`` fits the temperature, operating point
and conformal sets instead of on the validation images that chose the checkpoint: four ratios
(train, val, calibration, test), or ``calibration_fraction`` F, a share of each class's training images
(patients, when grouped) moved to calibration after the usual split, so validation and test stay as they were.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import CxrtlError
from ..fsutil import write_csv
from .records import SPLITS, DatasetIndex, Record

Split = dict[str, list[Record]]


def default_ratios(kind: str) -> tuple[float, ...]:
    """The paper's ratios: 0.7/0.15/0.15 for the COVID database, 0.7/0.2/0.1 for pneumonia and others."""
    return (0.7, 0.15, 0.15) if kind == "covid" else (0.7, 0.2, 0.1)


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"0.7,0.2,0.1"`` or ``"0.7,0.1,0.05,0.15"`` (commas and/or spaces) -> validated ratios."""
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise CxrtlError(f"ratios {text!r} are not numbers; give three like 0.7,0.15,0.15") from None
    return validate_ratios(values)


def validate_ratios(ratios) -> tuple[float, ...]:
    """Three (train, val, test) or four (train, val, calibration, test) non-negative ratios summing to 1
    with a positive train share, or a one-line CxrtlError."""
    values = tuple(float(r) for r in ratios)
    if len(values) not in (3, 4):
        raise CxrtlError(
            f"ratios need three values (train,val,test) or four (train,val,calibration,test), got {len(values)}"
        )
    if any(not math.isfinite(v) or v < 0 for v in values) or values[0] <= 0:
        raise CxrtlError(f"ratios {values} must be non-negative with a positive train share")
    if abs(sum(values) - 1.0) > 1e-6:
        raise CxrtlError(
            f"ratios {','.join(f'{v:g}' for v in values)} sum to {sum(values):g}, not 1; e.g. 0.7,0.15,0.15"
        )
    return values


def _names(ratios) -> tuple[str, ...]:
    """The subsets ``ratios`` fill, in order: train, val, test; or train, val, calibration, test."""
    return SPLITS if len(ratios) == 4 else ("train", "val", "test")


def _targets(n: int, ratios) -> list[int]:
    """Split ``n`` items by ``ratios`` (largest remainder), giving each positive share >= 1 item if possible."""
    m = len(ratios)
    raw = [n * r for r in ratios]
    counts = [math.floor(x) for x in raw]
    for i in sorted(range(m), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    for i in range(1, m):  # a non-empty val/(calibration/)test share gets one item when the class allows it
        if ratios[i] > 0 and counts[i] == 0 and counts[0] > 1:
            counts[i] += 1
            counts[0] -= 1
    return counts


def _rng(seed: int, label: str) -> np.random.Generator:
    # Seeded per class from the class name, so adding a class does not reshuffle the others.
    digest = hashlib.sha256(label.encode("utf-8")).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest[:4], "little")])


def _official(index: DatasetIndex) -> Split:
    if not index.records or any(r.source_split not in SPLITS for r in index.records):
        raise CxrtlError(
            f"--official needs Kermany's own train/val/test folders; {index.root} is a {index.layout} dataset"
        )
    out: Split = {s: [] for s in SPLITS}
    for r in index.records:
        assert r.source_split is not None  # checked above: every source_split is in SPLITS
        out[r.source_split].append(r)
    return out


def make_split(
    index: DatasetIndex,
    ratios=None,
    seed: int = 2022,
    group_by: str | None = None,
    official: bool = False,
    calibration_fraction: float | None = None,
) -> Split:
    """Seeded split stratified by class; ``group_by="patient"`` keeps each patient in one split.

    ``calibration_fraction`` F moves a share F of each class's training images (whole patients when grouped)
    to a calibration subset after the split is made, leaving validation and test unchanged.
    """
    if calibration_fraction is not None:
        if not (math.isfinite(calibration_fraction) and 0 < calibration_fraction < 1):
            raise CxrtlError(
                f"--calibration-fraction must be in (0, 1), not {calibration_fraction:g}; e.g. 0.1"
            )
        if ratios is not None and len(validate_ratios(ratios)) == 4:
            raise CxrtlError(
                "four ratios already give a calibration share; drop --calibration-fraction or give three ratios"
            )
        split = make_split(index, ratios, seed, group_by, official)
        return _sorted(_take_calibration(split, calibration_fraction, seed, group_by))
    if official:
        return _sorted(_official(index))
    ratios = validate_ratios(ratios if ratios is not None else default_ratios(index.kind))
    names = _names(ratios)
    if group_by not in (None, "patient"):
        raise CxrtlError(f"unknown group_by {group_by!r}; use 'patient'")
    if group_by == "patient" and index.records and not any(r.patient_id for r in index.records):
        raise CxrtlError(
            f"this dataset ({index.layout} layout) has no patient ids, so grouping by patient would treat "
            "each image as its own patient; give them in a CSV manifest with a patient_id column "
            "(path,label[,mask_path],patient_id), or drop --group-by"
        )
    out: Split = {s: [] for s in SPLITS}
    by_class: dict[str, list[Record]] = defaultdict(list)
    for r in sorted(index.records, key=lambda r: r.path):
        by_class[r.label].append(r)
    if group_by is None:
        for label in sorted(by_class):
            recs = by_class[label]
            order = _rng(seed, label).permutation(len(recs))
            counts = _targets(len(recs), ratios)
            start = 0
            for name, k in zip(names, counts):
                out[name].extend(recs[i] for i in order[start : start + k])
                start += k
        return _sorted(out)
    # Grouped: a patient goes to one split; patients are stratified by their majority class.
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in sorted(index.records, key=lambda r: r.path):
        groups[r.patient_id if r.patient_id else f"\0{r.path}"].append(r)
    strata: dict[str, list[str]] = defaultdict(list)
    for gid, recs in sorted(groups.items()):
        labels = sorted(r.label for r in recs)
        strata[max(sorted(set(labels)), key=labels.count)].append(gid)
    for label in sorted(strata):
        gids = strata[label]
        rng = _rng(seed, label)
        gids = [gids[i] for i in rng.permutation(len(gids))]
        gids.sort(key=lambda g: -len(groups[g]))  # stable: big patients first, random among equals
        total = sum(len(groups[g]) for g in gids)
        target = _targets(total, ratios)
        have = [0] * len(ratios)
        for g in gids:
            deficit = [
                (target[i] - have[i]) / max(target[i], 1) if ratios[i] > 0 else -math.inf
                for i in range(len(ratios))
            ]
            i = max(range(len(ratios)), key=lambda i: (deficit[i], -i))
            have[i] += len(groups[g])
            out[names[i]].extend(groups[g])
    return _sorted(out)


def _take_calibration(split: Split, fraction: float, seed: int, group_by: str | None) -> Split:
    """Move ``fraction`` of each class's training images (whole patients with ``group_by``) to calibration."""
    out = {name: list(recs) for name, recs in split.items()}
    train = sorted(out["train"], key=lambda r: r.path)
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in train:
        key = r.patient_id if group_by == "patient" and r.patient_id else f"\0{r.path}"
        groups[key].append(r)
    strata: dict[str, list[str]] = defaultdict(list)
    for gid, recs in sorted(groups.items()):
        labels = sorted(r.label for r in recs)
        strata[max(sorted(set(labels)), key=labels.count)].append(gid)
    moved: set[str] = set()
    for label in sorted(strata):
        gids = strata[label]
        gids = [gids[i] for i in _rng(seed, "calibration/" + label).permutation(len(gids))]
        total = sum(len(groups[g]) for g in gids)
        want = round(fraction * total)
        if want == 0 and total > 1:  # a class with training images gets at least one calibration image
            want = 1
        taken = 0
        for g in gids:
            if taken >= want or len(moved) + 1 >= len(groups):  # never empty the training subset
                break
            moved.add(g)
            taken += len(groups[g])
    out["train"] = [r for g, recs in groups.items() if g not in moved for r in recs]
    out["calibration"] = out.get("calibration", []) + [r for g in moved for r in groups[g]]
    return out


def _sorted(split: Split) -> Split:
    return {s: sorted(split.get(s, []), key=lambda r: r.path) for s in SPLITS}


def write_split_csv(path: str | os.PathLike, split: Split) -> Path:
    """Write ``path,label,split[,mask_path][,patient_id]`` rows (train, val[, calibration], test) atomically."""
    records = [(name, r) for name in SPLITS for r in sorted(split.get(name, []), key=lambda r: r.path)]
    with_mask = any(r.mask_path for _, r in records)
    with_patient = any(r.patient_id for _, r in records)
    header = (
        ["path", "label", "split"]
        + (["mask_path"] if with_mask else [])
        + (["patient_id"] if with_patient else [])
    )
    rows = []
    for name, r in records:
        row = [r.path, r.label, name]
        if with_mask:
            row.append(r.mask_path or "")
        if with_patient:
            row.append(r.patient_id or "")
        rows.append(row)
    try:
        return write_csv(path, header, rows)
    except OSError as exc:  # e.g. a parent that is not a folder, or a read-only file system
        raise CxrtlError(
            f"cannot write split CSV {path}: {exc.strerror or exc}; choose a writable path"
        ) from None


def read_split_csv(path: str | os.PathLike, index: DatasetIndex) -> Split:
    """Read a split CSV against ``index``; CxrtlError naming any listed file that no longer exists."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = reader.fieldnames or []
    except FileNotFoundError:
        raise CxrtlError(f"split CSV {path} does not exist; create it with `cxrtl data split`") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CxrtlError(f"cannot read split CSV {path}: {exc}") from None
    if not {"path", "label", "split"} <= set(fields):
        raise CxrtlError(f"split CSV {path} needs columns path,label,split; found {','.join(fields)}")
    known = {r.path: r for r in index.records}
    out: Split = {s: [] for s in SPLITS}
    missing, seen = [], set()
    for i, row in enumerate(rows, start=2):
        rel, label, name = row["path"], row["label"], row["split"]
        if name not in SPLITS:
            raise CxrtlError(
                f"split CSV {path} line {i}: split {name!r} is not one of {'/'.join(SPLITS)}; "
                "fix the file or regenerate it with `cxrtl data split`"
            )
        if label not in index.classes:
            raise CxrtlError(
                f"split CSV {path} line {i}: label {label!r} is not a class of {index.root} "
                f"({', '.join(index.classes)}); pass the dataset the split was made from"
            )
        if rel in seen:
            raise CxrtlError(f"split CSV {path} lists {rel} twice; regenerate it with `cxrtl data split`")
        seen.add(rel)
        if not index.abspath(rel).is_file():
            missing.append(rel)
            continue
        mask = row.get("mask_path") or None
        if mask and not index.abspath(mask).is_file():
            missing.append(mask)
            continue
        base = known.get(rel)
        out[name].append(
            Record(rel, label, mask, row.get("patient_id") or None, base.source_split if base else None)
        )
    if missing:
        raise SplitFilesMissing(path, index.root, missing)
    return out


class SplitFilesMissing(CxrtlError):
    """A split CSV names files the dataset does not have (``missing``: their relative paths)."""

    def __init__(self, split: Path, root: Path, missing: list[str]):
        self.split, self.root, self.missing = split, root, missing
        super().__init__(
            f"split CSV {split} names {len(missing)} file(s) that no longer exist under {root}: {self.shown}; "
            "regenerate it with `cxrtl data split`"
        )

    @property
    def shown(self) -> str:
        m = self.missing
        return ", ".join(m[:3]) + (f" and {len(m) - 3} more" if len(m) > 3 else "")
