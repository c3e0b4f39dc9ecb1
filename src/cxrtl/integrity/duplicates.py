"""Duplicate search over image hashes: exact (same decoded pixels) and near (perceptual hash) duplicates.

Why: the COVID-19 Radiography Database reuses Kermany images and Kermany repeats images across its folders,
so a split can leak test images into training. Candidate pairs are found by multi-index hashing (pigeonhole
on hash bands), not by comparing all pairs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import CxrtlError
from .hashing import ImageHash, ensure_pixel_digests, hash_images

DEFAULT_THRESHOLD = 6  # Hamming distance on the 64-bit pHash; re-encoding/resizing stays well below it
MAX_THRESHOLD = 20  # beyond this a 64-bit pHash no longer means "the same radiograph"
EXACT_SEARCH_RADIUS = 4  # exact candidates are searched at least this far, so threshold 0 still finds them
# A near pair must also agree on a finer 256-bit pHash (64x64 thumbnail): chest radiographs share their coarse
# layout, so distinct images can be close on 64 bits (measured on synthetic look-alikes: >= 44 of 256 bits
# apart), while re-encoded/resized copies stay within 8 of 256 at real sizes (within 24 for 64 px tests).
CONFIRM_BITS = 32


# ----------------------------------------------------------------------------------------------- matching
def _bands(radius: int) -> list[tuple[int, int]]:
    """Split 64 bits into radius+1 bands (shift, width): two hashes within radius share a band exactly."""
    n = radius + 1
    widths = [64 // n + (1 if k < 64 % n else 0) for k in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def _pairs_in_bucket(members: np.ndarray, h: np.ndarray, radius: int, labels: np.ndarray | None):
    """All pairs (i<j) of ``members`` within ``radius``, bounded memory for big buckets."""
    n = len(members)
    hm = h[members]
    lab = labels[members] if labels is not None else None
    if n <= 1024:
        a, b = np.triu_indices(n, 1)
        keep = np.bitwise_count(hm[a] ^ hm[b]) <= radius
        if lab is not None:
            keep &= lab[a] != lab[b]
        return members[a[keep]], members[b[keep]]
    block = max(1, 2_000_000 // n)
    ii, jj = [], []
    for s in range(0, n, block):
        e = min(n, s + block)
        d = np.bitwise_count(hm[s:e, None] ^ hm[None, :])
        mask = d <= radius
        mask &= np.arange(n)[None, :] > np.arange(s, e)[:, None]
        if lab is not None:
            mask &= lab[s:e, None] != lab[None, :]
        r, c = np.nonzero(mask)
        ii.append(members[r + s])
        jj.append(members[c])
    return np.concatenate(ii), np.concatenate(jj)


def _band_pairs(h: np.ndarray, shift: int, width: int, radius: int, labels: np.ndarray | None):
    """Pairs within ``radius`` among hashes that agree on one band, each coded as ``i * n + j`` (i < j)."""
    n = len(h)
    key = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    order = np.argsort(key, kind="stable")
    cuts = np.flatnonzero(np.diff(key[order])) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [n]))
    for s, e in zip(starts[(ends - starts) > 1], ends[(ends - starts) > 1]):
        i, j = _pairs_in_bucket(order[s:e], h, radius, labels)
        if len(i):
            lo, hi = np.minimum(i, j), np.maximum(i, j)
            yield lo.astype(np.int64) * n + hi.astype(np.int64)


def search_pairs(
    phashes: Sequence[int] | np.ndarray, radius: int, labels: Sequence | None = None
) -> list[tuple[int, int, int]]:
    """Index pairs (i<j, distance) of 64-bit hashes within ``radius``; with ``labels``, only across labels.

    Multi-index hashing: a pair within ``radius`` agrees exactly on at least one of radius+1 bands, so only
    pairs sharing a band value are compared.
    """
    if not 0 <= radius <= 63:
        raise CxrtlError(f"threshold {radius} out of range; use 0..{MAX_THRESHOLD}")
    h = np.asarray([int(x) for x in phashes], dtype=np.uint64)
    if len(h) < 2:
        return []
    lab = None
    if labels is not None:
        _, lab = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)
    n = len(h)
    found = [codes for shift, width in _bands(radius) for codes in _band_pairs(h, shift, width, radius, lab)]
    if not found:
        return []
    codes = np.unique(np.concatenate(found))
    i, j = codes // n, codes % n
    d = np.bitwise_count(h[i] ^ h[j])
    return [(int(a), int(b), int(c)) for a, b, c in zip(i, j, d)]


@dataclass
class Duplicates:
    """Exact and near duplicate pairs between hashed images (indices into ``hashes``)."""

    hashes: list[ImageHash]
    exact: list[tuple[int, int]]
    near: list[tuple[int, int, int]]  # exact pairs are not repeated here
    threshold: int

    def groups(self) -> list[list[int]]:
        """Connected components of the duplicate graph (each a sorted list of indices, size >= 2)."""
        parent = list(range(len(self.hashes)))

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b, *_ in [*self.exact, *self.near]:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        comps: dict[int, list[int]] = {}
        for i in range(len(parent)):
            comps.setdefault(find(i), []).append(i)
        return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def find_duplicates(
    hashes: list[ImageHash],
    threshold: int = DEFAULT_THRESHOLD,
    labels: Sequence | None = None,
    cache_dir=None,
    progress: bool = True,
    workers: int | None = None,
    use_cache: bool = True,
    confirm_bits: int = CONFIRM_BITS,
) -> Duplicates:
    """Exact and near duplicates among ``hashes`` (only across different ``labels`` when given).

    Near: 64-bit pHash within ``threshold`` and 256-bit pHash within ``confirm_bits``.
    """
    check_threshold(threshold)
    radius = max(threshold, EXACT_SEARCH_RADIUS)
    pairs = search_pairs([x.phash for x in hashes], radius, labels)
    # exact: identical file bytes, or the same size and identical full-resolution pixels
    cand = [
        (i, j)
        for i, j, _ in pairs
        if hashes[i].file_digest != hashes[j].file_digest
        and (hashes[i].width, hashes[i].height) == (hashes[j].width, hashes[j].height)
    ]
    hashes = ensure_pixel_digests(
        hashes,
        [k for ij in cand for k in ij],
        cache_dir=cache_dir,
        progress=progress,
        workers=workers,
        use_cache=use_cache,
    )
    exact, near = [], []
    for i, j, d in pairs:
        a, b = hashes[i], hashes[j]
        if a.file_digest == b.file_digest or (
            a.pixel_digest is not None and a.pixel_digest == b.pixel_digest
        ):
            exact.append((i, j))
        elif d <= threshold and (a.phash256 ^ b.phash256).bit_count() <= confirm_bits:
            near.append((i, j, d))
    return Duplicates(hashes, exact, near, threshold)


def check_threshold(threshold: int) -> int:
    """Validate a Hamming threshold (user input)."""
    if not isinstance(threshold, (int, np.integer)) or not 0 <= threshold <= MAX_THRESHOLD:
        raise CxrtlError(
            f"--threshold must be an integer in 0..{MAX_THRESHOLD}, not {threshold!r}; "
            f"the default {DEFAULT_THRESHOLD} catches re-encoded and resized copies"
        )
    return int(threshold)


def overlap_with(
    paths_a: Sequence[str | os.PathLike],
    paths_b: Sequence[str | os.PathLike],
    threshold: int = DEFAULT_THRESHOLD,
    cache_dir=None,
    progress: bool = True,
) -> set[str]:
    """Paths of ``paths_b`` (as given) whose content (exact or near duplicate) appears in ``paths_a``.

    Used to exclude stage-1 images from a stage-2 test set (``--exclude-overlap``).
    """
    given_b = {os.path.abspath(os.fspath(p)): os.fspath(p) for p in paths_b}
    hashes, _ = hash_images([*paths_a, *paths_b], cache_dir=cache_dir, progress=progress)
    set_a = {os.path.abspath(os.fspath(p)) for p in paths_a}
    labels = ["a" if h.path in set_a else "b" for h in hashes]
    dup = find_duplicates(hashes, threshold, labels=labels, cache_dir=cache_dir, progress=progress)
    out = set()
    for i, j, *_ in [*dup.exact, *dup.near]:
        for k in (i, j):
            p = dup.hashes[k].path
            if p in given_b and labels[k] == "b":
                out.add(given_b[p])
    return out
