"""Decode once: every image masked, resized and centre-cropped into one uint8 memmap ``[N, S, S]`` + JSON index.

The cache key covers each source file's (path, size, mtime) and the preprocessing, so it is reused by
every epoch and run with the same data and settings and rebuilt when either changes. The channel count is
not part of it: pseudo-RGB is expanded per batch on the device. A build writes into a temporary folder
that is renamed into place only when complete, so a killed build never leaves a cache that is later read.

Files that fail to decode at build time are listed in the index under ``failed`` (path -> reason) and
their rows stay zero; :func:`cxrtl.data.prepare_data` drops them from the split and records them as
skipped, so one corrupt file does not stop a 20,000-image run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import CxrtlError
from ..fsutil import ensure_dir, write_json
from .image_io import ImageReadError, load_gray, prepare_image
from .preprocess import Preprocess
from .records import DatasetIndex, Record

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.json"


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$CXRTL_CACHE_DIR``, else ``~/.cache/cxrtl``; ``~`` is expanded."""
    base = cache_dir or os.environ.get("CXRTL_CACHE_DIR")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "cxrtl"


def default_workers() -> int:
    """Decode threads: Pillow releases the GIL while decoding and resizing, so threads scale."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


class ImageCache:
    """A built cache: ``images`` (read-only memmap ``[N, S, S]``), ``paths``, ``row_of`` and ``failed``."""

    def __init__(self, directory: Path, meta: dict, built: bool = False):
        self.dir = Path(directory)
        self.meta = meta
        self.built = built  # True when this call (re)built it, False when it was reused
        self.paths: list[str] = list(meta["paths"])
        self.row_of: dict[str, int] = {p: i for i, p in enumerate(self.paths)}
        self.failed: dict[str, str] = dict(meta.get("failed", {}))
        self.converted: dict[str, str] = dict(meta.get("converted", {}))
        self.pp = Preprocess.from_dict(meta["preprocess"])
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.dir / IMAGES_FILE, mmap_mode="r")
        return self._images

    @property
    def image_size(self) -> int:
        return self.pp.image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self):  # a DataLoader worker reopens the memmap instead of copying it
        state = self.__dict__.copy()
        state["_images"] = None
        return state


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except OSError:
        return [None, None]
    return [st.st_size, st.st_mtime_ns]


def cache_key(index: DatasetIndex, records: list[Record], pp: Preprocess) -> tuple[str, list[Record]]:
    """(hex key, records in cache row order). Channels are excluded: they do not change the stored pixels."""
    masked = pp.input == "masked"
    rows = sorted({r.path: r for r in records}.values(), key=lambda r: r.path)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "version": CACHE_VERSION,
                "root": str(index.root),
                "input": pp.input,
                "image_size": pp.image_size,
                "resize_size": pp.resize_size,
            }
        ).encode()
    )
    for r in rows:
        entry: list = [r.path, _stat(index.abspath(r.path))]
        if masked:
            entry += [r.mask_path, _stat(index.abspath(r.mask_path)) if r.mask_path else None]
        h.update(json.dumps(entry).encode())
    return h.hexdigest(), rows


def _slug(index: DatasetIndex) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", index.root.name)[:40] or "dataset"


def _read_existing(directory: Path, key: str) -> ImageCache | None:
    try:
        meta = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))
        s = meta["preprocess"]["image_size"]
        expected = len(meta["paths"]) * s * s
        images = np.load(directory / IMAGES_FILE, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("key") != key or images.size != expected or images.dtype != np.uint8:
        return None
    return ImageCache(directory, meta)


def _decode(index: DatasetIndex, r: Record, pp: Preprocess):
    """One row: (pixels or None, failure reason or None, stored mode)."""
    info: dict = {}
    try:
        gray = load_gray(index.abspath(r.path), target_short_side=pp.resize_size, info=info)
        mask = None
        if pp.input == "masked":
            if not r.mask_path:
                return None, "no lung mask", info.get("mode")
            mask = load_gray(index.abspath(r.mask_path))
        return prepare_image(gray, pp, mask), None, info.get("mode")
    except ImageReadError as exc:
        return None, exc.reason if exc.path == str(index.abspath(r.path)) else f"mask: {exc.reason}", None
    except CxrtlError as exc:
        return None, str(exc), None


def _clean_stale(base: Path, slug: str, keep: Path, meta: dict) -> None:
    """Remove dead temp builds, and older caches of the same files and settings (sources changed)."""
    for d in base.glob(f".{slug}-*.tmp-*"):
        m = re.search(r"\.tmp-(\d+)-", d.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
    for d in base.glob(f"{slug}-*"):
        if d == keep or not d.is_dir():
            continue
        try:
            other = json.loads((d / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            other.get("root") == meta["root"]
            and other.get("preprocess") == meta["preprocess"]
            and other.get("paths") == meta["paths"]
        ):
            logger.info("removing outdated cache %s", d)
            shutil.rmtree(d, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_masks(index: DatasetIndex, records: list[Record] | None = None) -> None:
    """CxrtlError unless every record has a lung mask (masked input, paper eq. 9)."""
    records = index.records if records is None else records
    unmasked = [r.path for r in records if not r.mask_path]
    if not unmasked:
        return
    if len(unmasked) == len(records):
        raise CxrtlError(f"masked input needs lung masks, but {index.root} has none; use --input raw")
    raise CxrtlError(
        f"masked input needs a lung mask for every image, but {len(unmasked)} have none "
        f"(e.g. {unmasked[0]}); use --input raw or add the missing masks"
    )


def build_cache(
    index: DatasetIndex,
    records: list[Record],
    pp: Preprocess,
    cache_dir=None,
    progress: bool = True,
    workers: int | None = None,
) -> ImageCache:
    """Reuse or build the cache of ``records`` under ``pp``; the returned cache is complete and consistent."""
    if pp.input == "masked":
        check_masks(index, records)
    base = ensure_dir(default_cache_dir(cache_dir))
    key, rows = cache_key(index, records, pp)
    slug = _slug(index)
    final = base / f"{slug}-{key[:20]}"
    existing = _read_existing(final, key)
    if existing is not None:
        logger.info("reusing cache %s (%d images)", final, len(existing))
        return existing
    _check_space(base, len(rows) * pp.image_size**2 + (1 << 20))
    tmp = base / f".{slug}-{key[:20]}.tmp-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    try:
        tmp.mkdir()
        workers = default_workers() if workers is None else max(1, int(workers))
        meta = _write_folder(
            tmp, index, rows, pp, key, workers, progress, f"cache {slug} {pp.input} {pp.image_size}px"
        )
        _publish(tmp, final, key)
    except OSError as exc:
        raise CxrtlError(
            f"cannot write the cache under {base}: {exc.strerror or exc}; "
            "check free space and permissions or pass --cache-dir"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if meta["failed"]:
        logger.warning(
            "%d image(s) could not be decoded and are excluded, e.g. %s: %s",
            len(meta["failed"]),
            *next(iter(meta["failed"].items())),
        )
    logger.info("built cache %s: %d images in %.1f s", final, len(rows), meta["seconds"])
    _clean_stale(base, slug, final, meta)
    cache = _read_existing(final, key)
    if cache is None:  # pragma: no cover - only if the folder vanished under us
        raise CxrtlError(f"cache {final} disappeared while it was being built; run again")
    cache.built = True
    return cache


def _check_space(base: Path, need: int) -> None:
    free = shutil.disk_usage(base).free
    if need > free:
        raise CxrtlError(
            f"the cache needs {need / 2**30:.2f} GiB but {base} has {free / 2**30:.2f} GiB free; "
            "free space or pass --cache-dir"
        )


def _write_folder(
    tmp: Path,
    index: DatasetIndex,
    rows: list[Record],
    pp: Preprocess,
    key: str,
    workers: int,
    progress: bool,
    desc: str,
) -> dict:
    """Decode ``rows`` into ``tmp``'s memmap (fsynced) and write its JSON index; return that index."""
    t0 = time.perf_counter()
    n, s = len(rows), pp.image_size
    images = np.lib.format.open_memmap(tmp / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(n, s, s))
    failed, converted = _decode_into(images, index, rows, pp, workers, progress, desc)
    images.flush()
    del images
    with open(tmp / IMAGES_FILE, "rb+") as fh:
        os.fsync(fh.fileno())
    meta = {
        "format": "cxrtl-cache",
        "version": CACHE_VERSION,
        "key": key,
        "root": str(index.root),
        "preprocess": {"input": pp.input, "image_size": pp.image_size, "resize_size": pp.resize_size},
        "shape": [n, s, s],
        "paths": [r.path for r in rows],
        "failed": failed,
        "converted": converted,
        "seconds": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(tmp / INDEX_FILE, meta)
    return meta


def _decode_into(
    images, index: DatasetIndex, rows: list[Record], pp: Preprocess, workers: int, progress: bool, desc: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Fill ``images[i]`` with row i, threads decoding; -> (failed path -> reason, converted path -> mode)."""
    failed: dict[str, str] = {}
    converted: dict[str, str] = {}
    bar = tqdm(total=len(rows), desc=desc, unit="img", disable=not progress, dynamic_ncols=True, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = (
            pool.map(lambda r: _decode(index, r, pp), rows)
            if workers > 1
            else (_decode(index, r, pp) for r in rows)
        )
        for i, (r, (pixels, reason, mode)) in enumerate(zip(rows, results)):
            if pixels is None:
                failed[r.path] = reason
            else:
                images[i] = pixels
                if mode not in (None, "L"):
                    converted[r.path] = f"{mode} -> L"
            bar.update(1)
    bar.close()
    return failed, converted


def _publish(tmp: Path, final: Path, key: str) -> None:
    """Rename the finished folder into place (atomic); a concurrent identical build may have won the race."""
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same cache first, or a stale one is in the way
        if _read_existing(final, key) is None:
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
