"""Is this the dataset a run was trained on? A content fingerprint of a sample of its training files.

A run records the SHA-256 of up to 16 of its training files (``data_fingerprint.json``). Evaluating it later
on a folder that has the same file names but other content (another download, another synthetic seed, a
re-export) would otherwise be scored without a word; :func:`differing` finds it by hashing the same files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..fsutil import read_json, write_json

FILE = "data_fingerprint.json"
SAMPLE = 16
_MAX_BYTES = 1 << 20  # hash at most the first MiB of a file: enough to tell two images apart


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read(_MAX_BYTES)).hexdigest()


def sample(rels: Sequence[str], n: int = SAMPLE) -> list[str]:
    """A deterministic, evenly spread sample of ``n`` relative paths."""
    ordered = sorted(rels)
    step = max(1, len(ordered) // n)
    return ordered[::step][:n]


def write_fingerprint(run_dir: str | os.PathLike, root: str | os.PathLike, rels: Sequence[str]) -> Path:
    """Record the content hashes of a sample of ``rels`` (paths under ``root``) in the run directory."""
    root = Path(root)
    hashes = {rel: _digest(root / rel) for rel in sample(rels) if (root / rel).is_file()}
    return write_json(Path(run_dir) / FILE, {"format": "cxrtl-data-fingerprint", "files": hashes})


def differing(run_dir: str | os.PathLike, root: str | os.PathLike) -> tuple[int, int]:
    """(files whose content differs, files compared) between the run's fingerprint and ``root``; (0, 0)
    when the run has no fingerprint (older runs) or none of its sampled files exist under ``root``."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return 0, 0
    saved = (read_json(path, "data fingerprint") or {}).get("files") or {}
    root = Path(root)
    present = {rel: h for rel, h in saved.items() if isinstance(rel, str) and (root / rel).is_file()}
    return sum(_digest(root / rel) != h for rel, h in present.items()), len(present)
