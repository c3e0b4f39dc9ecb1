"""Hashing image files for duplicate search (perceptual hashes, pixel digests), through the on-disk cache."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import CxrtlError
from .hash_cache import HashCache, cache_root

log = logging.getLogger(__name__)

DRAFT_SIDE = 96  # big JPEGs are DCT-scaled (Image.draft) to a shorter side of at least this


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

    def to_entry(self) -> dict:
        """The JSON fields of this hash in the hash cache (the path is the cache's key)."""
        return {
            "w": self.width,
            "h": self.height,
            "p": f"{self.phash:016x}",
            "d": f"{self.dhash:016x}",
            "f": self.file_digest,
            "x": self.pixel_digest,
            "q": f"{self.phash256:064x}",
        }

    @classmethod
    def from_entry(cls, path: str, entry: dict) -> ImageHash | None:
        """The hash of ``path`` read back from a cache entry; None if the entry is damaged."""
        try:
            return cls(
                path,
                int(entry["w"]),
                int(entry["h"]),
                int(entry["p"], 16),
                int(entry["d"], 16),
                str(entry["f"]),
                entry.get("x"),
                int(entry["q"], 16),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Unreadable:
    """A file that could not be hashed, and why (the run goes on without it)."""

    path: str
    reason: str


# ----------------------------------------------------------------------------------------------- one image
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

    # BOX is an area average: cheap, and size-independent
    big = Image.fromarray(gray).resize((64, 64), Image.Resampling.BOX)
    small = big.resize((32, 32), Image.Resampling.BOX)
    return (
        _bits_to_int(imagehash.phash(small).hash),
        _bits_to_int(imagehash.dhash(small).hash),
        _bits_to_int(imagehash.phash(big, hash_size=16).hash),
    )


def _decode_reduced(path: str, info: dict) -> np.ndarray | str:
    """Grey pixels of ``path`` (big JPEGs DCT-reduced: ``info["drafted"]``), or why it cannot be decoded."""
    from ..data.image_io import ImageReadError, load_gray

    try:
        gray = load_gray(path, target_short_side=DRAFT_SIDE, info=info)
    except ImageReadError as exc:
        return exc.reason
    except CxrtlError as exc:  # e.g. DICOM support missing
        return str(exc)
    except (OSError, ValueError, MemoryError) as exc:
        return f"cannot decode ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if gray.ndim != 2 or gray.size == 0:
        return "not a 2-D image"
    return gray


def _hash_one(path: str) -> ImageHash | Unreadable:
    """Hash one file with cxrtl's decoder (big JPEGs DCT-reduced; a full decode gives the pixel digest)."""
    from PIL import Image

    from ..data.image_io import PILLOW_FORMATS

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return Unreadable(path, f"cannot read ({exc.strerror or exc})")
    if not data:
        return Unreadable(path, "empty file")
    info: dict = {}
    gray = _decode_reduced(path, info)
    if isinstance(gray, str):
        return Unreadable(path, gray)
    drafted = bool(info.get("drafted"))
    h, w = gray.shape
    if drafted:  # the reduced decode hides the true size, which exact matching compares
        try:
            with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as im:
                w, h = im.size
        except (OSError, ValueError):
            pass
    ph, dh, p256 = _perceptual(gray)
    return ImageHash(
        path,
        int(w),
        int(h),
        ph,
        dh,
        hashlib.sha1(data).hexdigest(),
        None if drafted else _pixel_digest(gray),
        p256,
    )


def _full_pixel_digest(path: str) -> str | None:
    """Pixel digest from a full-resolution decode (for exact-duplicate candidates decoded reduced)."""
    from ..data.image_io import load_gray

    try:
        return _pixel_digest(load_gray(path))
    except (CxrtlError, OSError, ValueError, MemoryError):
        return None


# --------------------------------------------------------------------------------------------- many images
def _workers(workers: int | None) -> int:
    return max(1, workers if workers else min(4, os.cpu_count() or 1))


def _cached(cache: HashCache, path: str) -> ImageHash | None:
    entry = cache.get(path)
    return None if entry is None else ImageHash.from_entry(path, entry)


def hash_images(
    paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int | None = None,
    use_cache: bool = True,
) -> tuple[list[ImageHash], list[Unreadable]]:
    """Hash image files (cached on disk); unreadable files are returned separately, never raised."""
    from tqdm import tqdm

    abspaths = [os.path.abspath(os.fspath(p)) for p in paths]
    cache = HashCache(cache_root(cache_dir) if use_cache else None)
    found: dict[str, ImageHash | Unreadable] = {}
    todo = []
    for p in dict.fromkeys(abspaths):
        hit = _cached(cache, p)
        if hit is not None:
            found[p] = hit
        else:
            todo.append(p)
    log.debug("dedup: %d hashes cached, %d to compute", len(found), len(todo))
    try:
        if todo:
            with (
                ThreadPoolExecutor(_workers(workers)) as pool,
                tqdm(
                    total=len(todo),
                    desc="hashing images",
                    unit="img",
                    disable=None if progress else True,
                    leave=False,
                ) as bar,
            ):
                for item in pool.map(_hash_one, todo, chunksize=16):
                    found[item.path] = item
                    if isinstance(item, ImageHash):
                        cache.put(item.path, item.to_entry())
                    bar.update(1)
    finally:
        cache.save()  # keep what was done, even when interrupted
    hashes: list[ImageHash] = []
    bad: list[Unreadable] = []
    for p in dict.fromkeys(abspaths):
        item = found[p]
        if isinstance(item, ImageHash):
            hashes.append(item)
        else:
            bad.append(item)
    return hashes, bad


def ensure_pixel_digests(
    hashes: list[ImageHash],
    which: Iterable[int],
    cache_dir=None,
    progress=True,
    workers: int | None = None,
    use_cache: bool = True,
) -> list[ImageHash]:
    """Fill in full-resolution pixel digests for the given indices (cached); returns the updated list."""
    from tqdm import tqdm

    need = sorted({i for i in which if hashes[i].pixel_digest is None})
    if not need:
        return hashes
    out = list(hashes)
    cache = HashCache(cache_root(cache_dir) if use_cache else None)
    try:
        with (
            ThreadPoolExecutor(_workers(workers)) as pool,
            tqdm(
                total=len(need),
                desc="decoding candidates",
                unit="img",
                disable=None if progress else True,
                leave=False,
            ) as bar,
        ):
            for i, digest in zip(need, pool.map(_full_pixel_digest, [out[i].path for i in need])):
                if digest is not None:
                    out[i] = dataclasses.replace(out[i], pixel_digest=digest)
                    cache.put(out[i].path, out[i].to_entry())
                bar.update(1)
    finally:
        cache.save()
    return out
