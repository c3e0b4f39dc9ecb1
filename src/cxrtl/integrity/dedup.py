"""`cxrtl data dedup` over dataset roots: duplicates within one dataset, across its splits or between two."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..data.records import DatasetIndex, Record, split_rank
from ..errors import CxrtlError
from .duplicates import DEFAULT_THRESHOLD, Duplicates, check_threshold, find_duplicates
from .hashing import ImageHash, hash_images


class Item(NamedTuple):
    """One image to hash: its root (0: ROOT, 1: ROOT2), its path relative to that root, and its split."""

    root: int
    path: str
    split: str | None  # None for an image outside any split

    def sort_key(self) -> tuple:
        """Reading order: ROOT before ROOT2, train before val before test, then by path."""
        return self.root, split_rank(self.split), self.path


@dataclass(frozen=True)
class _Found:
    """Duplicates among hashed items, with which pairs a dedup run reports and in which order."""

    dup: Duplicates
    items: list[Item]  # items[i] is the image of dup.hashes[i]
    two_roots: bool
    with_split: bool

    def reported(self, i: int, j: int) -> bool:
        """With two roots: pairs across them, and pairs inside the split root when there is a split."""
        a, b = self.items[i], self.items[j]
        if not self.two_roots or a.root != b.root:
            return True
        return self.with_split and a.root == 1

    def ordered(self, i: int, j: int) -> tuple[int, int]:
        return (i, j) if self.items[i].sort_key() <= self.items[j].sort_key() else (j, i)

    def paths(self, i: int, j: int) -> list[str]:
        """The pair's relative paths in reading order."""
        a, b = self.ordered(i, j)
        return [self.items[a].path, self.items[b].path]

    def pairs(self) -> tuple[list[list], list[list]]:
        """Reported exact pairs ``[a, b]`` and near pairs ``[a, b, distance]`` (relative paths), sorted."""
        exact = [self.paths(i, j) for i, j in self.dup.exact if self.reported(i, j)]
        near = [[*self.paths(i, j), d] for i, j, d in self.dup.near if self.reported(i, j)]
        return sorted(exact), sorted(near, key=lambda x: (x[2], x[0], x[1]))

    def group_count(self) -> int:
        """Duplicate groups with at least one reported pair."""
        return sum(1 for g in self.dup.groups() if any(self.reported(a, b) for a in g for b in g if a < b))


def _load_index(root: str | os.PathLike) -> DatasetIndex:
    from ..data.sources import load_dataset

    return load_dataset(root)


def dedup_dataset(
    roots: Sequence[str | os.PathLike],
    split_csv: str | os.PathLike | None = None,
    threshold: int = DEFAULT_THRESHOLD,
    cache_dir=None,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[dict, dict | None]:
    """Find duplicates within one dataset, across splits of a split CSV, or across two datasets.

    Returns ``(report, cleaned_split)``; ``cleaned_split`` (split name -> records) is None without a split.
    One root: all duplicates within it. With ``split_csv`` (of the last root): pairs that cross splits and
    duplicates within a split. Two roots: pairs between the datasets (first path from ROOT, second from
    ROOT2).
    """
    check_threshold(threshold)
    if not 1 <= len(roots) <= 2:
        raise CxrtlError("dedup takes one or two dataset roots")
    indexes = [_load_index(r) for r in roots]
    split = None
    if split_csv is not None:
        from ..data.splits import read_split_csv

        split = read_split_csv(split_csv, indexes[-1])
    items = _items(indexes, split)
    abspaths = [os.path.abspath(os.fspath(indexes[it.root].abspath(it.path))) for it in items]
    hashes, bad = hash_images(abspaths, cache_dir=cache_dir, progress=progress, workers=workers)
    found = _find(
        hashes,
        dict(zip(abspaths, items)),
        len(indexes) == 2,
        split is not None,
        threshold,
        cache_dir=cache_dir,
        progress=progress,
        workers=workers,
    )
    exact, near = found.pairs()
    shown = _shown(indexes, items, abspaths)
    report: dict = {
        "roots": [str(r) for r in roots],
        "scope": "splits" if split is not None else ("datasets" if len(indexes) == 2 else "dataset"),
        "threshold": threshold,
        "hash": "phash-64",
        "images": len(hashes),
        "exact": exact,
        "near": near,
        "unreadable": [[shown.get(u.path, u.path), u.reason] for u in bad],
    }
    cleaned = None
    if split is not None:
        leaks, cleaned = _split_leaks(found, split)
        report.update(leaks)
    report["summary"] = {
        "images": len(hashes),
        "exact_pairs": len(exact),
        "near_pairs": len(near),
        "unreadable": len(bad),
        "groups": found.group_count(),
    }
    return report, cleaned


def _items(indexes: list[DatasetIndex], split: Mapping[str, Sequence[Record]] | None) -> list[Item]:
    """What to hash: every record of each root, except that the split root contributes its split's records."""
    plain = indexes[:-1] if split is not None else indexes
    items = [Item(k, r.path, None) for k, idx in enumerate(plain) for r in idx.records]
    if split is not None:
        in_split = {r.path: s for s, recs in split.items() for r in recs}
        items += [Item(len(indexes) - 1, p, s) for p, s in in_split.items()]
    return items


def _find(
    hashes: list[ImageHash],
    item_of: dict[str, Item],
    two_roots: bool,
    with_split: bool,
    threshold: int,
    **options,
) -> _Found:
    """Duplicates among ``hashes``; two roots without a split are only searched across the roots."""
    items = [item_of[h.path] for h in hashes]
    labels = [str(it.root) for it in items] if two_roots and not with_split else None
    return _Found(find_duplicates(hashes, threshold, labels=labels, **options), items, two_roots, with_split)


def _shown(indexes: list[DatasetIndex], items: list[Item], abspaths: list[str]) -> dict[str, str]:
    """How each absolute path is shown: relative to its root with one root, root-joined with two."""
    shown: dict[str, str] = {}
    for it, a in zip(items, abspaths):
        joined = os.fspath(Path(indexes[it.root].root) / it.path)
        shown.setdefault(a, it.path if len(indexes) == 1 else joined)
    return shown


def _split_leaks(found: _Found, split: Mapping[str, Sequence[Record]]) -> tuple[dict, dict]:
    """The report's cross-split pairs, their counts and the dropped images; and the split without them."""
    cross = []
    for i, j, *_ in [*found.dup.exact, *found.dup.near]:
        a, b = (found.items[k] for k in found.ordered(i, j))
        if a.split and b.split and a.split != b.split:
            cross.append([a.path, b.path, a.split, b.split])
    counts: dict[str, int] = {}
    for *_, sa, sb in cross:  # in finding order (exact, then near): the report's key order
        counts[f"{sa}-{sb}"] = counts.get(f"{sa}-{sb}", 0) + 1
    drop = _drop_set(found)
    split_of = {it.path: it.split for it in found.items if it.split}
    cleaned = {s: [r for r in recs if r.path not in drop] for s, recs in split.items()}
    return {
        "cross_split": sorted(cross),
        "cross_split_counts": counts,
        "dropped": sorted([p, split_of[p]] for p in drop),
    }, cleaned


def _drop_set(found: _Found) -> set[str]:
    """Split paths to drop: each duplicate group keeps one member of its earliest split (train first).

    With two roots, validation and test images of the split dataset whose content is in the other dataset
    are dropped as well (training may keep them).
    """
    items = found.items
    split_root = 1 if found.two_roots else 0
    drop: set[str] = set()
    for group in found.dup.groups():
        members = [i for i in group if items[i].root == split_root and items[i].split]
        if any(items[i].root != split_root for i in group):
            drop.update(items[i].path for i in members if items[i].split != "train")
            members = [i for i in members if items[i].split == "train"]
        if len(members) > 1:
            keep = min(members, key=lambda i: (split_rank(items[i].split), items[i].path))
            drop.update(items[i].path for i in members if i != keep)
    return drop
