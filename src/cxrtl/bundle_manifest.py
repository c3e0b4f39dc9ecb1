"""A bundle's manifest (``bundle.json``): reading it, checking its shape, and verifying the files a command loads.

A bundle is a folder whose ``bundle.json`` lists every other file with its size and SHA-256. Nothing is
loaded from a bundle unless the manifest lists it and the file matches: a file that is missing, changed,
truncated, or present but unlisted is refused in one line. The checksums guard integrity (a damaged
download, an accidental edit), not authenticity: whoever can rewrite a file can rewrite ``bundle.json``.

Building a bundle is :mod:`cxrtl.inference.bundle`'s job; this module is low in the layering (no torch),
so resolving a model reference (:mod:`cxrtl.model_ref`) and the Hub (:mod:`cxrtl.hub`) can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import CxrtlError
from .fsutil import read_json, sha256_file

BUNDLE_FORMAT = "cxrtl-bundle"
BUNDLE_VERSION = 1
META_FILE = "bundle.json"
SEGMENTER_FILE = "segmenter.safetensors"  # with segmenter.json: a masked model's lung U-Net (--segmenter)
SEGMENTER_ONNX = "segmenter.onnx"  # the same U-Net for onnxruntime, so a masked bundle runs without torch
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain file name: no folders, no leading dot
_LOADED_SUFFIXES = {".safetensors", ".onnx", ".json", ".yaml"}  # what commands read from a bundle


def is_bundle(path: str | os.PathLike) -> bool:
    """True for a folder holding a ``bundle.json`` (checked, with its files, by :func:`verify_bundle`)."""
    return (Path(path) / META_FILE).is_file()


def read_bundle_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """``bundle.json`` of ``folder``, checked to be a well-formed cxrtl bundle manifest this version reads."""
    folder = Path(folder)
    if not is_bundle(folder):
        raise CxrtlError(
            f"{folder} is not a cxrtl bundle (no {META_FILE}); make one with `cxrtl export RUN --bundle DIR`"
        )
    meta = read_json(folder / META_FILE, "bundle metadata")
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise CxrtlError(
            f"{folder / META_FILE} is not cxrtl bundle metadata; export the bundle again with `cxrtl export`"
        )
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= BUNDLE_VERSION:
        raise CxrtlError(f"{folder} is a cxrtl bundle of version {version!r}; upgrade cxrtl to read it")
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise CxrtlError(
            f"{folder / META_FILE} lists no files (malformed manifest); download or export the bundle again"
        )
    for name, entry in files.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == META_FILE:
            raise CxrtlError(
                f"{folder / META_FILE} lists {name!r}, which is not a plain file name of a bundle "
                "(malformed manifest); download or export the bundle again"
            )
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _SHA256.fullmatch(entry["sha256"])
            or isinstance(entry.get("bytes"), bool)
            or not isinstance(entry.get("bytes"), int)
        ):
            raise CxrtlError(
                f"{folder / META_FILE}: the entry of {name} has no valid 'sha256' and 'bytes' (malformed "
                "manifest); download or export the bundle again"
            )
    return meta


def verify_bundle(folder: str | os.PathLike, only: str | None = None) -> dict[str, Any]:
    """Check every file listed in ``bundle.json`` (or just ``only``, which must be listed) against its size
    and SHA-256. Raises a one-line CxrtlError naming the first file that is missing, truncated or changed."""
    folder = Path(folder)
    meta = read_bundle_meta(folder)
    files = meta["files"]
    if only is not None and only not in files:
        raise CxrtlError(_unlisted(folder, only))
    for name, want in sorted(files.items()):
        if only is not None and name != only:
            continue
        path = folder / name
        if not path.is_file():
            raise CxrtlError(
                f"bundle {folder} lacks {name}, which its {META_FILE} lists (incomplete copy or download); "
                "download or export the bundle again"
            )
        if path.stat().st_size != want["bytes"] or sha256_file(path) != want["sha256"]:
            raise CxrtlError(
                f"bundle {folder}: {name} does not match the SHA-256 in {META_FILE} (tampered with or "
                "truncated); download or export the bundle again"
            )
    return meta


def require_listed(folder: str | os.PathLike, meta: dict[str, Any], names: Iterable[str]) -> None:
    """Every file of ``names`` that exists in the bundle (or is needed) must be in its manifest."""
    folder = Path(folder)
    for name in names:
        if name not in meta["files"]:
            raise CxrtlError(_unlisted(folder, name))


def loadable_files(folder: str | os.PathLike) -> list[str]:
    """The files of the bundle that some command may load: each must be listed (checked by the caller)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in _LOADED_SUFFIXES)


def _unlisted(folder: Path, name: str) -> str:
    return (
        f"bundle {folder}: {name} is not listed in its {META_FILE}, so it cannot be verified (an edited or "
        "incomplete bundle); download or export the bundle again"
    )


def verified_bundle(folder: str | os.PathLike) -> dict[str, Any]:
    """Verify every listed file, and refuse any file a command could load that the manifest does not list."""
    folder = Path(folder)
    meta = verify_bundle(folder)
    require_listed(folder, meta, [n for n in loadable_files(folder) if n != META_FILE])
    return meta
