"""Duplicate detection: exact (same decoded pixels) and near (perceptual hash) duplicates, fast and cached.

Why: the COVID-19 Radiography Database reuses Kermany images and Kermany repeats images across its folders,
so a split can leak test images into training. Images are hashed once (decoded at reduced size), hashes are
cached on disk, and candidate pairs are found by multi-index hashing (pigeonhole on hash bands), not by
comparing all pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CxrtlError

log = logging.getLogger(__name__)

HASH_VERSION = 2
DEFAULT_THRESHOLD = 6  # Hamming distance on the 64-bit pHash; re-encoding/resizing stays well below it
MAX_THRESHOLD = 20  # beyond this a 64-bit pHash no longer means "the same radiograph"
EXACT_SEARCH_RADIUS = 4  # exact candidates are searched at least this far, so threshold 0 still finds them
# A near pair must also agree on a finer 256-bit pHash (64x64 thumbnail): chest radiographs share their coarse
# layout, so distinct images can be close on 64 bits (measured on synthetic look-alikes: >= 44 of 256 bits apart),
# while re-encoded/resized copies stay within 8 of 256 at real sizes (within 24 for tiny 64 px test images).
CONFIRM_BITS = 32
DRAFT_SIDE = 96  # big JPEGs are DCT-scaled (Image.draft) to a shorter side of at least this
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ImageHash:
    """Hashes of one image file: 64-bit pHash and dHash, file-bytes digest, and (lazily) a pixel digest."""

    path: str  # absolute path
    width: int
    height: int
    phash: int
    dhash: int
    file_digest: str
    pixel_digest: str | None = None
    phash256: int = 0  # finer pHash (16x16 DCT of a 64x64 thumbnail), confirms near pairs


@dataclass(frozen=True)
class Unreadable:
    """A file that could not be hashed, and why (the run goes on without it)."""

    path: str
    reason: str


# ----------------------------------------------------------------------------------------------- decoding
def _pixel_digest(gray) -> str:
    """Digest of decoded grey pixels and their shape: equal iff the pixels are equal."""
    arr = np.ascontiguousarray(np.asarray(gray, dtype=np.uint8))
    h = hashlib.sha1(f"{arr.shape[0]}x{arr.shape[1]}:".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(bool).ravel()).tobytes(), "big")


def _perceptual(gray: np.ndarray) -> tuple[int, int, int]:
    """64-bit pHash and dHash (32x32 area-averaged thumbnail) and a 256-bit pHash (64x64 thumbnail)."""
    import imagehash
    from PIL import Image

    big = Image.fromarray(gray).resize((64, 64), Image.BOX)  # area average: cheap, and size-independent
    small = big.resize((32, 32), Image.BOX)
    return (_bits_to_int(imagehash.phash(small).hash), _bits_to_int(imagehash.dhash(small).hash),
            _bits_to_int(imagehash.phash(big, hash_size=16).hash))


def _hash_one(path: str) -> ImageHash | Unreadable:
    """Hash one file with cxrtl's own decoder (DCT-reduced for big JPEGs; a full decode gives the pixel digest)."""
    from PIL import Image

    from ..data.image_io import ImageReadError, load_gray

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return Unreadable(path, f"cannot read ({exc.strerror or exc})")
    if not data:
        return Unreadable(path, "empty file")
    info: dict = {}
    try:
        gray = load_gray(path, target_short_side=DRAFT_SIDE, info=info)
    except ImageReadError as exc:
        return Unreadable(path, exc.reason)
    except CxrtlError as exc:  # e.g. DICOM support missing
        return Unreadable(path, str(exc))
    except (OSError, ValueError, MemoryError) as exc:
        return Unreadable(path, f"cannot decode ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    if gray.ndim != 2 or gray.size == 0:
        return Unreadable(path, "not a 2-D image")
    drafted = bool(info.get("drafted"))
    h, w = gray.shape
    if drafted:
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except (OSError, ValueError):
            pass
    ph, dh, p256 = _perceptual(gray)
    return ImageHash(path, int(w), int(h), ph, dh, hashlib.sha1(data).hexdigest(),
                     None if drafted else _pixel_digest(gray), p256)


def _full_pixel_digest(path: str) -> str | None:
    """Pixel digest from a full-resolution decode (for exact-duplicate candidates decoded reduced)."""
    from ..data.image_io import load_gray

    try:
        return _pixel_digest(load_gray(path))
    except (CxrtlError, OSError, ValueError, MemoryError):
        return None


# ------------------------------------------------------------------------------------------------- cache
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where hashes are cached: the ``dedup`` folder of :func:`cxrtl.data.cache.default_cache_dir`."""
    from ..data.cache import default_cache_dir  # lazy: it pulls in Pillow and tqdm, and the CLI imports us

    return default_cache_dir(cache_dir) / "dedup"


def _shard_file(root: Path, directory: str) -> Path:
    return root / (hashlib.sha1(directory.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json")


class _HashCache:
    """On-disk hash cache, one JSON file per image directory, keyed by file name + size + mtime."""

    def __init__(self, root: Path | None):
        self.root = root
        self.shards: dict[str, dict] = {}
        self.dirty: set[str] = set()

    def _shard(self, directory: str) -> dict:
        if directory not in self.shards:
            entries: dict = {}
            if self.root is not None:
                try:
                    obj = json.loads(_shard_file(self.root, directory).read_text("utf-8"))
                    if (isinstance(obj, dict) and obj.get("version") == HASH_VERSION
                            and obj.get("directory") == directory and isinstance(obj.get("entries"), dict)):
                        entries = obj["entries"]
                except (OSError, ValueError):
                    entries = {}  # missing or damaged cache: rebuilt, never trusted
            self.shards[directory] = entries
        return self.shards[directory]

    @staticmethod
    def _stat_key(path: str) -> list | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def get(self, path: str) -> ImageHash | None:
        directory, name = os.path.split(path)
        entry = self._shard(directory).get(name)
        key = self._stat_key(path)
        if not entry or key is None or entry.get("stat") != key:
            return None
        try:
            return ImageHash(path, int(entry["w"]), int(entry["h"]), int(entry["p"], 16), int(entry["d"], 16),
                             str(entry["f"]), entry.get("x"), int(entry["q"], 16))
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, item: ImageHash) -> None:
        directory, name = os.path.split(item.path)
        key = self._stat_key(item.path)
        if key is None:
            return
        self._shard(directory)[name] = {"stat": key, "w": item.width, "h": item.height,
                                        "p": f"{item.phash:016x}", "d": f"{item.dhash:016x}",
                                        "f": item.file_digest, "x": item.pixel_digest,
                                        "q": f"{item.phash256:064x}"}
        self.dirty.add(directory)

    def save(self) -> None:
        """Write changed shards atomically; a cache that cannot be written only costs speed next time."""
        if self.root is None or not self.dirty:
            return
        from ..fsutil import write_json

        for directory in sorted(self.dirty):
            try:
                write_json(_shard_file(self.root, directory),
                           {"version": HASH_VERSION, "directory": directory, "entries": self.shards[directory]})
            except (CxrtlError, OSError) as exc:
                log.warning("dedup hash cache not saved: %s", exc)
                break
        self.dirty.clear()


# ------------------------------------------------------------------------------------------------ hashing
def _workers(workers: int | None) -> int:
    return max(1, workers if workers else min(4, os.cpu_count() or 1))


def hash_images(paths: Sequence[str | os.PathLike], cache_dir: str | os.PathLike | None = None,
                progress: bool = True, workers: int | None = None, use_cache: bool = True
                ) -> tuple[list[ImageHash], list[Unreadable]]:
    """Hash image files (cached on disk); unreadable files are returned separately, never raised."""
    from tqdm import tqdm

    abspaths = [os.path.abspath(os.fspath(p)) for p in paths]
    cache = _HashCache(cache_root(cache_dir) if use_cache else None)
    found: dict[str, ImageHash | Unreadable] = {}
    todo = []
    for p in dict.fromkeys(abspaths):
        hit = cache.get(p)
        if hit is not None:
            found[p] = hit
        else:
            todo.append(p)
    log.debug("dedup: %d hashes cached, %d to compute", len(found), len(todo))
    try:
        if todo:
            with ThreadPoolExecutor(_workers(workers)) as pool, \
                    tqdm(total=len(todo), desc="hashing images", unit="img", disable=None if progress else True,
                         leave=False) as bar:
                for item in pool.map(_hash_one, todo, chunksize=16):
                    found[item.path] = item
                    if isinstance(item, ImageHash):
                        cache.put(item)
                    bar.update(1)
    finally:
        cache.save()  # keep what was done, even when interrupted
    hashes, bad = [], []
    for p in dict.fromkeys(abspaths):
        (hashes if isinstance(found[p], ImageHash) else bad).append(found[p])
    return hashes, bad


def ensure_pixel_digests(hashes: list[ImageHash], which: Iterable[int], cache_dir=None, progress=True,
                         workers: int | None = None, use_cache: bool = True) -> list[ImageHash]:
    """Fill in full-resolution pixel digests for the given indices (cached); returns the updated list."""
    from tqdm import tqdm

    need = sorted({i for i in which if hashes[i].pixel_digest is None})
    if not need:
        return hashes
    out = list(hashes)
    cache = _HashCache(cache_root(cache_dir) if use_cache else None)
    try:
        with ThreadPoolExecutor(_workers(workers)) as pool, \
                tqdm(total=len(need), desc="decoding candidates", unit="img",
                     disable=None if progress else True, leave=False) as bar:
            for i, digest in zip(need, pool.map(_full_pixel_digest, [out[i].path for i in need])):
                if digest is not None:
                    out[i] = dataclasses.replace(out[i], pixel_digest=digest)
                    cache.put(out[i])
                bar.update(1)
    finally:
        cache.save()
    return out


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


def search_pairs(phashes: Sequence[int] | np.ndarray, radius: int, labels: Sequence | None = None
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
    found: list[np.ndarray] = []
    for shift, width in _bands(radius):
        key = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        cuts = np.flatnonzero(np.diff(ks)) + 1
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [n]))
        for s, e in zip(starts[(ends - starts) > 1], ends[(ends - starts) > 1]):
            i, j = _pairs_in_bucket(order[s:e], h, radius, lab)
            if len(i):
                lo, hi = np.minimum(i, j), np.maximum(i, j)
                found.append(lo.astype(np.int64) * n + hi.astype(np.int64))
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


def find_duplicates(hashes: list[ImageHash], threshold: int = DEFAULT_THRESHOLD, labels: Sequence | None = None,
                    cache_dir=None, progress: bool = True, workers: int | None = None,
                    use_cache: bool = True, confirm_bits: int = CONFIRM_BITS) -> Duplicates:
    """Exact and near duplicates among ``hashes`` (only across different ``labels`` when given).

    Near: 64-bit pHash within ``threshold`` and 256-bit pHash within ``confirm_bits``.
    """
    check_threshold(threshold)
    radius = max(threshold, EXACT_SEARCH_RADIUS)
    pairs = search_pairs([x.phash for x in hashes], radius, labels)
    # exact: identical file bytes, or the same size and identical full-resolution pixels
    cand = [(i, j) for i, j, _ in pairs
            if hashes[i].file_digest != hashes[j].file_digest
            and (hashes[i].width, hashes[i].height) == (hashes[j].width, hashes[j].height)]
    hashes = ensure_pixel_digests(hashes, [k for ij in cand for k in ij], cache_dir=cache_dir,
                                  progress=progress, workers=workers, use_cache=use_cache)
    exact, near = [], []
    for i, j, d in pairs:
        a, b = hashes[i], hashes[j]
        if a.file_digest == b.file_digest or (a.pixel_digest is not None and a.pixel_digest == b.pixel_digest):
            exact.append((i, j))
        elif d <= threshold and (a.phash256 ^ b.phash256).bit_count() <= confirm_bits:
            near.append((i, j, d))
    return Duplicates(hashes, exact, near, threshold)


def check_threshold(threshold: int) -> int:
    """Validate a Hamming threshold (user input)."""
    if not isinstance(threshold, (int, np.integer)) or not 0 <= threshold <= MAX_THRESHOLD:
        raise CxrtlError(f"--threshold must be an integer in 0..{MAX_THRESHOLD}, not {threshold!r}; "
                         f"the default {DEFAULT_THRESHOLD} catches re-encoded and resized copies")
    return int(threshold)


def overlap_with(paths_a: Sequence[str | os.PathLike], paths_b: Sequence[str | os.PathLike],
                 threshold: int = DEFAULT_THRESHOLD, cache_dir=None, progress: bool = True) -> set[str]:
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


# -------------------------------------------------------------------------------------- datasets and splits
def _load_index(root: str | os.PathLike):
    from ..data.sources import load_dataset

    return load_dataset(root)


def dedup_dataset(roots: Sequence[str | os.PathLike], split_csv: str | os.PathLike | None = None,
                  threshold: int = DEFAULT_THRESHOLD, cache_dir=None, progress: bool = True,
                  workers: int | None = None) -> tuple[dict, dict | None]:
    """Find duplicates within one dataset, across splits of a split CSV, or across two datasets.

    Returns ``(report, cleaned_split)``; ``cleaned_split`` (split name -> records) is None without a split.
    One root: all duplicates within it. With ``split_csv`` (of the last root): pairs that cross splits and
    duplicates within a split. Two roots: pairs between the datasets (first path from ROOT, second from ROOT2).
    """
    check_threshold(threshold)
    if not 1 <= len(roots) <= 2:
        raise CxrtlError("dedup takes one or two dataset roots")
    indexes = [_load_index(r) for r in roots]
    split = None
    if split_csv is not None:
        from ..data.splits import read_split_csv

        split = read_split_csv(split_csv, indexes[-1])
    # what to hash: (dataset number, relative path, split or None)
    items: list[tuple[int, str, str | None]] = []
    if split is not None:
        in_split = {r.path: s for s, recs in split.items() for r in recs}
        for k, idx in enumerate(indexes[:-1]):
            items += [(k, r.path, None) for r in idx.records]
        items += [(len(indexes) - 1, p, s) for p, s in in_split.items()]
    else:
        for k, idx in enumerate(indexes):
            items += [(k, r.path, None) for r in idx.records]
    abspaths = [os.path.abspath(os.fspath(indexes[k].abspath(rel))) for k, rel, _ in items]
    hashes, bad = hash_images(abspaths, cache_dir=cache_dir, progress=progress, workers=workers)
    by_abs = {a: it for a, it in zip(abspaths, items)}
    meta = [by_abs[h.path] for h in hashes]
    labels = [str(m[0]) for m in meta] if len(indexes) == 2 and split is None else None
    dup = find_duplicates(hashes, threshold, labels=labels, cache_dir=cache_dir, progress=progress,
                          workers=workers)

    def keep_pair(i, j):
        ki, kj = meta[i][0], meta[j][0]
        if len(indexes) == 2:
            if ki != kj:
                return True
            return split is not None and ki == kj == 1  # duplicates inside the split dataset
        return True

    def order(i, j):
        """Put the pair in a stable reading order: ROOT before ROOT2, train before val before test."""
        ka = (meta[i][0], SPLIT_ORDER.get(meta[i][2] or "", 0), meta[i][1])
        kb = (meta[j][0], SPLIT_ORDER.get(meta[j][2] or "", 0), meta[j][1])
        return (i, j) if ka <= kb else (j, i)

    def show(i):
        return meta[i][1]

    exact, near = [], []
    for i, j in dup.exact:
        if keep_pair(i, j):
            a, b = order(i, j)
            exact.append([show(a), show(b)])
    for i, j, d in dup.near:
        if keep_pair(i, j):
            a, b = order(i, j)
            near.append([show(a), show(b), d])
    exact.sort()
    near.sort(key=lambda x: (x[2], x[0], x[1]))
    report: dict = {
        "roots": [str(r) for r in roots],
        "scope": "splits" if split is not None else ("datasets" if len(indexes) == 2 else "dataset"),
        "threshold": threshold,
        "hash": "phash-64",
        "images": len(hashes),
        "exact": exact,
        "near": near,
        "unreadable": [[_display(indexes, items, abspaths, u.path), u.reason] for u in bad],
    }
    cleaned = None
    if split is not None:
        split_of = [m[2] for m in meta]
        cross = [[show(a), show(b), split_of[a], split_of[b]] for a, b in
                 (order(i, j) for i, j, *_ in [*dup.exact, *dup.near])
                 if split_of[a] and split_of[b] and split_of[a] != split_of[b]]
        report["cross_split"] = sorted(cross)
        counts: dict[str, int] = {}
        for *_, sa, sb in cross:
            key = f"{sa}-{sb}"
            counts[key] = counts.get(key, 0) + 1
        report["cross_split_counts"] = counts
        drop = _drop_set(dup, meta, two_roots=len(indexes) == 2)
        cleaned = {s: [r for r in recs if r.path not in drop] for s, recs in split.items()}
        report["dropped"] = sorted([p, in_split[p]] for p in drop)
    report["summary"] = {"images": len(hashes), "exact_pairs": len(exact), "near_pairs": len(near),
                         "unreadable": len(bad),
                         "groups": sum(1 for g in dup.groups() if any(keep_pair(a, b) for a in g for b in g
                                                                     if a < b))}
    return report, cleaned


def _display(indexes, items, abspaths, abspath: str) -> str:
    """How a path is shown: relative to its root with one root, root-joined with two."""
    for (k, rel, _), a in zip(items, abspaths):
        if a == abspath:
            return rel if len(indexes) == 1 else os.fspath(Path(indexes[k].root) / rel)
    return abspath


def _drop_set(dup: Duplicates, meta, two_roots: bool) -> set[str]:
    """Split paths to drop: each duplicate group keeps one member of its earliest split (train first).

    With two roots, validation and test images of the split dataset whose content is in the other dataset
    are dropped as well (training may keep them).
    """
    drop: set[str] = set()
    split_k = 1 if two_roots else 0
    for group in dup.groups():
        members = [i for i in group if meta[i][0] == split_k and meta[i][2]]
        outside = any(meta[i][0] != split_k for i in group)
        if outside:
            drop.update(meta[i][1] for i in members if meta[i][2] != "train")
            members = [i for i in members if meta[i][2] == "train"]
        if len(members) > 1:
            keep = min(members, key=lambda i: (SPLIT_ORDER.get(meta[i][2], 9), meta[i][1]))
            drop.update(meta[i][1] for i in members if i != keep)
    return drop
