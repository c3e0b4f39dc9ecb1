"""The reproduction's splits: written once into ``OUT/splits/`` and reused by every run and every later call.

The COVID split always follows the paper's protocol; the pneumonia split follows ``--split-protocol``,
both after optional subsampling (``max_per_class``) and, with ``--exclude-overlap``, without pneumonia
test images whose content the COVID model saw in training or validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.records import DatasetIndex, Record
from ..fsutil import read_json, write_json


def _subsample(records: list[Record], max_per_class: int | None, seed: int) -> list[Record]:
    """At most ``max_per_class`` records of each (class, official folder), chosen with ``seed``."""
    if not max_per_class:
        return records
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        groups.setdefault((r.label, r.source_split), []).append(r)
    per_class: dict[str, int] = {}
    for (label, _), recs in groups.items():
        per_class[label] = per_class.get(label, 0) + len(recs)
    rng = np.random.default_rng(seed)
    keep: set[str] = set()
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        recs = sorted(groups[key], key=lambda r: r.path)
        n = (
            max(1, round(max_per_class * len(recs) / per_class[key[0]]))
            if per_class[key[0]] > max_per_class
            else len(recs)
        )
        keep.update(recs[i].path for i in rng.choice(len(recs), size=min(n, len(recs)), replace=False))
    return [r for r in records if r.path in keep]


def _make_split(index: DatasetIndex, protocol: str, max_per_class: int | None, seed: int) -> dict:
    from ..data import make_split

    sub = DatasetIndex(
        index.root, index.layout, index.classes, _subsample(index.records, max_per_class, seed)
    )
    return make_split(
        sub, seed=seed, group_by="patient" if protocol == "patient" else None, official=protocol == "official"
    )


def _exclude_overlap(
    covid: DatasetIndex, covid_split: dict, pneu: DatasetIndex, pneu_split: dict, cache_dir, progress: bool
) -> list[str]:
    """Drop pneumonia test images whose content is in the COVID model's training or validation data."""
    from ..integrity.duplicates import overlap_with

    seen = [str(covid.abspath(r.path)) for name in ("train", "val") for r in covid_split[name]]
    test = {str(pneu.abspath(r.path)): r for r in pneu_split["test"]}
    dropped = overlap_with(seen, list(test), cache_dir=cache_dir, progress=progress)
    pneu_split["test"] = [r for p, r in test.items() if p not in dropped]
    return sorted(test[p].path for p in dropped)


def write_splits(opts, covid, pneu, out: Path, max_per_class) -> dict:
    from ..data import read_split_csv, write_split_csv

    paths = {"covid": out / "splits" / "covid.csv", "pneumonia": out / "splits" / "pneumonia.csv"}
    notes: dict = {}
    if paths["covid"].is_file():  # written by an earlier, interrupted call: reuse, never remake
        covid_split = read_split_csv(paths["covid"], covid)
    else:
        covid_split = _make_split(covid, "paper", max_per_class, opts.seed)
        write_split_csv(paths["covid"], covid_split)
    if pneu is not None:
        overlap_file = out / "splits" / "pneumonia_overlap_dropped.json"
        if paths["pneumonia"].is_file():
            read_split_csv(paths["pneumonia"], pneu)
        else:
            pneu_split = _make_split(pneu, opts.split_protocol, max_per_class, opts.seed)
            if opts.exclude_overlap:
                dropped = _exclude_overlap(
                    covid, covid_split, pneu, pneu_split, opts.cache_dir, opts.progress
                )
                write_json(overlap_file, {"dropped": dropped})
            write_split_csv(paths["pneumonia"], pneu_split)
        if opts.exclude_overlap:
            notes["overlap_dropped"] = read_json(overlap_file, "overlap record")["dropped"]
    notes["paths"] = {k: str(v) for k, v in paths.items() if v.is_file()}
    return notes
