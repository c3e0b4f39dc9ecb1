"""Dataset roots on disk -> records: COVID-19 Radiography, Kermany chest_xray, class folders, CSV manifest.

Indexing reads only the first and last few KB of each file (magic bytes, end marker, a quick content
fingerprint); full decoding happens once, in the cache. Junk is skipped with a reason and every image is
counted once, even when the download holds a second copy of the whole tree.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import CxrtlError
from .image_io import SUFFIXES_OF_FORMAT, header_size, looks_truncated, shape_problem, sniff_format
from .records import KERMANY_FOLDERS, DatasetIndex, Record, Skipped

logger = logging.getLogger(__name__)

COVID_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
IGNORED_DIRS = {"__MACOSX": "macOS archive metadata folder", "$RECYCLE.BIN": "recycle bin"}
_SNIFF_BYTES = 4096
_EXPECTED = (
    "expected COVID-19_Radiography_Dataset/<class>/images/, chest_xray/{train,val,test}/"
    "{NORMAL,PNEUMONIA}/, one folder per class, or a CSV manifest (path,label[,mask_path]"
    "[,patient_id])"
)

# Kermany file names carry the patient: person<ID>_bacteria_<n>, person<ID>_virus_<n>, IM-<ID>-<n>,
# NORMAL2-IM-<ID>-<n>. IDs are not split-qualified: grouping over-merges rather than leaks.
_PATIENT_RES = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),
    re.compile(r"^(NORMAL2-IM-\d+)-\d+", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-\d+", re.IGNORECASE),
)


def kermany_patient_id(filename: str) -> str | None:
    """Patient id from a Kermany file name (``person1_virus_6.jpeg`` -> ``person1``), or None."""
    for rx in _PATIENT_RES:
        m = rx.match(filename)
        if m:
            return m.group(1)
    return None


@dataclass
class _Candidate:
    rel: str
    label: str
    mask_rel: str | None = None
    patient_id: str | None = None
    source_split: str | None = None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _list_dirs(d: Path) -> list[Path]:
    try:
        return sorted(
            p for p in d.iterdir() if p.is_dir() and not _is_hidden(p.name) and p.name not in IGNORED_DIRS
        )
    except OSError:
        return []


def _has_image_suffix_files(d: Path) -> bool:
    try:
        with os.scandir(d) as it:
            return any(
                e.is_file()
                and not _is_hidden(e.name)
                and Path(e.name).suffix.lower()
                in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".gif", ".webp")
                for e in it
            )
    except OSError:
        return False


def _detect_here(d: Path) -> str | None:
    """The layout whose folders sit directly in ``d``, or None."""
    subdirs = {p.name: p for p in _list_dirs(d)}
    if sum((subdirs[c] / "images").is_dir() for c in COVID_CLASSES if c in subdirs) >= 2:
        return "covid-radiography"
    if any(s in subdirs and any((subdirs[s] / c).is_dir() for c in KERMANY_CLASSES) for s in KERMANY_FOLDERS):
        return "kermany"
    with_images = [
        p for p in subdirs.values() if _has_image_suffix_files(p) or _has_image_suffix_files(p / "images")
    ]
    if len(with_images) >= 2:
        return "class-folders"
    return None


def detect_layout(root: Path) -> tuple[str, Path]:
    """(layout, dataset folder) for ``root`` itself or the one dataset folder directly inside it."""
    layout = _detect_here(root)
    if layout:
        return layout, root
    found = [(lay, child) for child in _list_dirs(root) if (lay := _detect_here(child))]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(f"{c.name} ({lay})" for lay, c in found)
        raise CxrtlError(f"{root} holds several datasets: {names}; pass one of them as the root")
    raise CxrtlError(f"no recognisable dataset layout under {root}; {_EXPECTED}")


def _walk(ds_root: Path, skipped: list[Skipped]):
    """Yield (relative parts, absolute path) of every visible file; hidden and ignored items are skipped."""
    for dirpath, dirnames, filenames in os.walk(ds_root):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            rel = (here / name).relative_to(ds_root).as_posix()
            if name in IGNORED_DIRS:
                skipped.append(Skipped(rel + "/", IGNORED_DIRS[name]))
            elif _is_hidden(name):
                skipped.append(Skipped(rel + "/", "hidden folder"))
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            p = here / name
            rel_path = p.relative_to(ds_root)
            if _is_hidden(name):
                skipped.append(Skipped(rel_path.as_posix(), "hidden file"))
            else:
                yield rel_path.parts, p


def _collect(layout: str, ds_root: Path, skipped: list[Skipped]):
    """Walk ``ds_root`` and sort every file into image candidates, masks and junk."""
    candidates: list[_Candidate] = []
    masks: set[str] = set()
    stray: list[str] = []
    class_dirs = {p.name for p in _list_dirs(ds_root)} if layout == "class-folders" else set()
    for parts, _ in _walk(ds_root, skipped):
        rel = "/".join(parts)
        n = len(parts)
        if layout == "covid-radiography" and n >= 3 and parts[-3] in COVID_CLASSES:
            if parts[-2] == "masks":
                masks.add(rel)
                continue
            if parts[-2] == "images":
                mask = "/".join(parts[:-2] + ("masks", parts[-1]))
                candidates.append(_Candidate(rel, parts[-3], mask_rel=mask))
                continue
        elif layout == "kermany" and n >= 3 and parts[-3] in KERMANY_FOLDERS and parts[-2] in KERMANY_CLASSES:
            candidates.append(
                _Candidate(rel, parts[-2], patient_id=kermany_patient_id(parts[-1]), source_split=parts[-3])
            )
            continue
        elif layout == "class-folders" and n >= 2 and parts[0] in class_dirs:
            if "masks" in parts[1:-1]:
                masks.add(rel)
                continue
            inner = parts[1:-1]
            if inner in ((), ("images",)):
                mask = "/".join((parts[0], "masks", parts[-1]))
                candidates.append(_Candidate(rel, parts[0], mask_rel=mask))
                continue
        stray.append(rel)
    return candidates, masks, stray


def _fingerprint(path: Path) -> tuple[str | None, int, bytes, str | None]:
    """(sniffed format, size, quick fingerprint of head+tail, problem or None) reading at most 8 KB."""
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
        size = os.fstat(fh.fileno()).st_size
        if size > len(head):
            fh.seek(max(size - _SNIFF_BYTES, len(head)))
            tail = fh.read(_SNIFF_BYTES)
        else:
            tail = head
    fmt = sniff_format(head)
    problem = None
    if fmt == "DICOM" or (fmt is None and path.suffix.lower() in SUFFIXES_OF_FORMAT["DICOM"]):
        from .dicom import header_problem  # pydicom reads the header: no pixel data, no decoder...

        return "DICOM", size, hashlib.blake2b(head + tail, digest_size=16).digest(), header_problem(path)
    if fmt:
        dims = header_size(fmt, head)
        if dims:  # a bomb, or a strip beyond 1:20 that no radiograph is
            problem = shape_problem(*dims)
        if problem is None and looks_truncated(fmt, tail):
            problem = "truncated (no end-of-image marker)"
    return fmt, size, hashlib.blake2b(head + tail, digest_size=16).digest(), problem


def _full_hash(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _screen(ds_root: Path, candidates: list[_Candidate], skipped: list[Skipped]) -> list[_Candidate]:
    """Drop non-images, truncated files and byte-identical duplicates (the shallowest copy is kept)."""
    good: list[_Candidate] = []
    by_quick: dict[tuple, list[_Candidate]] = defaultdict(list)

    def probe(c: _Candidate):
        try:
            return _fingerprint(ds_root / c.rel)
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:  # I/O bound: a few KB per file
        probes = list(pool.map(probe, candidates, chunksize=64))
    for c, result in zip(candidates, probes):
        if isinstance(result, OSError):
            skipped.append(Skipped(c.rel, f"unreadable ({result.strerror or result})"))
            continue
        fmt, size, quick, problem = result
        if size == 0:
            skipped.append(Skipped(c.rel, "empty file"))
        elif fmt is None:
            skipped.append(Skipped(c.rel, "not an image"))
        elif problem:
            skipped.append(Skipped(c.rel, problem))
        else:
            if Path(c.rel).suffix.lower() not in SUFFIXES_OF_FORMAT.get(fmt, ()):
                logger.debug("%s is a %s despite its extension; using its content", c.rel, fmt)
            by_quick[(size, quick)].append(c)
            good.append(c)
    drop: set[str] = set()
    for group in by_quick.values():
        if len(group) < 2:
            continue
        by_full: dict[bytes, list[_Candidate]] = defaultdict(list)
        for c in group:
            by_full[_full_hash(ds_root / c.rel)].append(c)
        for same in by_full.values():
            same.sort(key=lambda c: (c.rel.count("/"), c.rel))
            for dup in same[1:]:
                extra = "" if dup.label == same[0].label else f", labelled {same[0].label} there"
                skipped.append(Skipped(dup.rel, f"duplicate of {same[0].rel}{extra}"))
                drop.add(dup.rel)
    return [c for c in good if c.rel not in drop]


def _finish(
    ds_root: Path,
    layout: str,
    classes: list[str],
    candidates: list[_Candidate],
    masks: set[str] | None,
    skipped: list[Skipped],
) -> DatasetIndex:
    records, missing = [], []
    for c in sorted(candidates, key=lambda c: c.rel):
        mask = c.mask_rel if masks and c.mask_rel in masks else None
        if masks and mask is None:  # only a dataset that has masks at all can miss one
            missing.append(c.rel)
        records.append(Record(c.rel, c.label, mask, c.patient_id, c.source_split))
    counts = {k: 0 for k in classes}
    for r in records:
        counts[r.label] = counts.get(r.label, 0) + 1
    empty = [k for k, n in counts.items() if n == 0]
    if empty:
        raise CxrtlError(
            f"class {', '.join(repr(k) for k in empty)} under {ds_root} has no usable images; "
            "add images or remove the class folder"
        )
    if len(classes) < 2:
        raise CxrtlError(
            f"only one class ({classes[0] if classes else 'none'}) under {ds_root}; "
            "a classifier needs at least two"
        )
    skipped.sort(key=lambda s: s.path)
    if missing:
        logger.info(
            "%d of %d images under %s have no lung mask (masked input will refuse them)",
            len(missing),
            len(records),
            ds_root,
        )
    logger.debug(
        "%s: %d images in %d classes (%s), %d files skipped",
        ds_root,
        len(records),
        len(classes),
        layout,
        len(skipped),
    )
    return DatasetIndex(
        root=ds_root,
        layout=layout,
        classes=sorted(classes),
        records=records,
        skipped=skipped,
        missing_masks=missing,
    )


def _load_folder(root: Path) -> DatasetIndex:
    layout, ds_root = detect_layout(root)
    skipped: list[Skipped] = []
    candidates, masks, stray = _collect(layout, ds_root, skipped)
    for rel in stray:
        try:
            fmt = _fingerprint(ds_root / rel)[0]
        except OSError:
            fmt = None
        skipped.append(Skipped(rel, "not an image" if fmt is None else "image outside the class folders"))
    if layout == "covid-radiography":
        classes = [c for c in COVID_CLASSES if (ds_root / c).is_dir()]
    elif layout == "kermany":
        classes = [c for c in KERMANY_CLASSES if any((ds_root / s / c).is_dir() for s in KERMANY_FOLDERS)]
    else:
        classes = [p.name for p in _list_dirs(ds_root)]
    candidates = _screen(ds_root, candidates, skipped)
    return _finish(ds_root, layout, classes, candidates, masks if layout != "kermany" else None, skipped)


def _load_manifest(csv_path: Path) -> DatasetIndex:
    ds_root = csv_path.parent.resolve()
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            fields = set(rows[0].keys()) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CxrtlError(f"cannot read manifest {csv_path}: {exc}; expected a UTF-8 CSV") from None
    if not rows or not {"path", "label"} <= fields:
        raise CxrtlError(
            f"manifest {csv_path} needs a header with path,label[,mask_path][,patient_id] "
            "and at least one row"
        )
    skipped: list[Skipped] = []
    candidates: list[_Candidate] = []
    mask_set: set[str] = set()
    seen: set[str] = set()

    def rel_of(value: str) -> str:
        p = Path(value.strip()).expanduser()
        return os.path.relpath(p if p.is_absolute() else ds_root / p, ds_root).replace(os.sep, "/")

    for row in rows:
        path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not path:
            continue
        rel = rel_of(path)
        if rel in seen:
            skipped.append(Skipped(rel, "listed twice in the manifest"))
            continue
        seen.add(rel)
        if not label:
            skipped.append(Skipped(rel, "no label"))
            continue
        if not (ds_root / rel).is_file():
            skipped.append(Skipped(rel, "missing file"))
            continue
        mask = (row.get("mask_path") or "").strip()
        mask_rel = rel_of(mask) if mask else None
        if mask_rel and (ds_root / mask_rel).is_file():
            mask_set.add(mask_rel)
        candidates.append(
            _Candidate(
                rel, label, mask_rel=mask_rel, patient_id=(row.get("patient_id") or "").strip() or None
            )
        )
    classes = sorted({c.label for c in candidates} | {(r.get("label") or "").strip() for r in rows} - {""})
    candidates = _screen(ds_root, candidates, skipped)
    return _finish(ds_root, "csv", classes, candidates, mask_set, skipped)


def load_dataset(root: str | os.PathLike) -> DatasetIndex:
    """Index a dataset: the COVID-19 Radiography or Kermany folder (or a parent of it), class folders, or a CSV."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CxrtlError(
            f"dataset root {root} does not exist; pass the folder you downloaded or a CSV manifest"
        )
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise CxrtlError(f"{root} is a file, not a dataset folder; pass a folder or a CSV manifest")
        return _load_manifest(root)
    return _load_folder(root.resolve())
