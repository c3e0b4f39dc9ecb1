"""Leakage checks on a split: duplicate images across splits and patients that straddle splits.

Why: an image (or a patient) seen in training and scored again in validation or test inflates every number
reported on that split. `cxrtl data check ROOT --split SPLIT.csv` reports these under "leakage" and exits 1
when it finds any, the way a linter does.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

from ..data.records import SPLITS, DatasetIndex, Record
from .dedup import Item
from .duplicates import DEFAULT_THRESHOLD, Duplicates, check_threshold, find_duplicates
from .hashing import hash_images

log = logging.getLogger(__name__)


def straddling_patients(split: Mapping[str, Sequence[Record]]) -> list[dict]:
    """Patients whose images fall into more than one split, with the image count per split."""
    seen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, records in split.items():
        for r in records:
            if r.patient_id:
                seen[r.patient_id][name] += 1
    return [
        {"patient": pid, "splits": {s: counts[s] for s in SPLITS if s in counts}}
        for pid, counts in sorted(seen.items())
        if len(counts) > 1
    ]


def _cross_split_pairs(dup: Duplicates, items: list[Item]) -> tuple[list, list, dict[str, int]]:
    """Exact and near pair rows, earlier split first, and the number of pairs per ``"split_a-split_b"``."""
    exact: list[list] = []
    near: list[list] = []
    counts: dict[str, int] = defaultdict(int)
    for i, j, *d in [*dup.exact, *dup.near]:
        a, b = sorted((items[i], items[j]), key=Item.sort_key)  # stable: a tie keeps (i, j)
        (near if d else exact).append([a.path, b.path, *d, a.split, b.split])
        counts[f"{a.split}-{b.split}"] += 1
    return exact, near, counts


def check_split(
    index: DatasetIndex,
    split: Mapping[str, Sequence[Record]],
    threshold: int = DEFAULT_THRESHOLD,
    cache_dir=None,
    progress: bool = False,
    workers: int | None = None,
) -> dict:
    """Cross-split duplicates (exact and near, paths relative to the root) and patients that straddle splits.

    Returns ``{"ok", "threshold", "exact": [[a, b, split_a, split_b]], "near": [[a, b, d, split_a, split_b]],
    "pairs_by_splits": {"train-test": n, ...}, "patients_straddling": [...], "patients_known",
    "unreadable": [[path, reason]]}``; ``a`` is always in the earlier split (train < val < test).
    """
    check_threshold(threshold)
    split_of: dict[str, str] = {}
    rel_of: dict[str, str] = {}
    for name, records in split.items():
        for r in records:
            a = os.path.abspath(os.fspath(index.abspath(r.path)))
            split_of[a] = name
            rel_of[a] = r.path
    hashes, bad = hash_images(list(split_of), cache_dir=cache_dir, progress=progress, workers=workers)
    dup = find_duplicates(
        hashes,
        threshold,
        labels=[split_of[h.path] for h in hashes],
        cache_dir=cache_dir,
        progress=progress,
        workers=workers,
    )
    exact, near, counts = _cross_split_pairs(dup, [Item(0, rel_of[h.path], split_of[h.path]) for h in hashes])
    patients = straddling_patients(split)
    known = any(r.patient_id for records in split.values() for r in records)
    result = {
        "ok": not exact and not near and not patients,
        "threshold": threshold,
        "images": len(hashes),
        "exact": sorted(exact),
        "near": sorted(near, key=lambda x: (x[2], x[0], x[1])),
        "pairs_by_splits": dict(sorted(counts.items())),
        "patients_known": known,
        "patients_straddling": patients,
        "unreadable": [[rel_of[u.path], u.reason] for u in bad],
    }
    if exact or near or patients:
        log.debug(
            "leakage: %d exact, %d near cross-split pairs, %d patients straddle splits",
            len(exact),
            len(near),
            len(patients),
        )
    return result


def leakage_lines(result: Mapping, shown: int = 5) -> list[str]:
    """A readable summary of :func:`check_split`'s result: counts first, then the first few cases of each."""
    exact, near, patients = result["exact"], result["near"], result["patients_straddling"]
    if result["ok"]:
        who = "" if result["patients_known"] else " (no patient ids: patients not checked)"
        return [f"leakage: none across {result['images']} images{who}"]
    lines = [
        f"leakage: {len(exact)} exact and {len(near)} near-duplicate pair(s) across splits, "
        f"{len(patients)} patient(s) in more than one split"
    ]
    if result["pairs_by_splits"]:
        lines.append(
            "  duplicate pairs by splits: "
            + ", ".join(f"{k} {n}" for k, n in result["pairs_by_splits"].items())
        )
    for a, b, sa, sb in exact[:shown]:
        lines.append(f"  same pixels: {a} ({sa}) = {b} ({sb})")
    for a, b, d, sa, sb in near[:shown]:
        lines.append(f"  near (distance {d}): {a} ({sa}) ~ {b} ({sb})")
    for p in patients[:shown]:
        lines.append(f"  patient {p['patient']}: " + ", ".join(f"{s} {n}" for s, n in p["splits"].items()))
    if max(len(exact), len(near), len(patients)) > shown:
        lines.append("  ... (all of them with --format json)")
    lines.append("  fix: re-split with --group-by patient, or drop duplicates with `cxrtl data dedup --drop`")
    return lines
