"""Atomic output: every file cxrtl writes goes to a temporary file first and is renamed into place.

A crash, a full disk or a SIGKILL therefore leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import CxrtlError

_MAX_HEADER = 100 * 1024 * 1024  # a safetensors JSON header larger than this is not one


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _current_umask()  # read once at import; outputs get 0o666 & ~UMASK, folders 0o777 & ~UMASK


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or raise a one-line error saying it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CxrtlError(
            f"cannot create output directory {path}: {exc.strerror or exc}; choose a writable location"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CxrtlError(f"output directory {path} is not writable; choose a writable location")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    except OSError as exc:
        raise CxrtlError(f"cannot write {path}: {exc.strerror or exc}; choose a writable location") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~UMASK)  # mkstemp makes 0600; outputs get the user's usual permissions
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise CxrtlError(
            f"cannot write {path}: {exc.strerror or exc}; check free disk space and permissions"
        ) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN is written as null)."""
    return write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (checkpoints and bundles record it to catch damage)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> Path:
    """Atomically write torch ``tensors`` as safetensors, through the same path (and permissions) as every file."""
    from safetensors.torch import save

    return write_bytes(path, save(tensors, metadata=metadata))


def _describe_foreign(path: Path, head: bytes) -> str:
    """Name what a non-safetensors file looks like, for the error message."""
    if head[:2] == b"PK":
        return "a zip archive (a PyTorch .pt/.pth pickle?)"
    if head[:1] == b"\x80":
        return "a Python pickle"
    if head[:4] == b"\x89HDF":
        return "an HDF5 file"
    return "not a safetensors file"


def read_safetensors_header(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Parse a safetensors header without loading tensors; one-line error for anything else (pickles incl.)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CxrtlError(
                    f"{what} {path} is too short to be a safetensors file; "
                    "give a cxrtl checkpoint (.safetensors + .json)"
                )
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > min(size - 8, _MAX_HEADER):
                raise CxrtlError(
                    f"{what} {path} is {_describe_foreign(path, head)}, which cxrtl never "
                    "loads (pickles can run code); give a cxrtl checkpoint (.safetensors + .json)"
                )
            header = json.loads(fh.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise CxrtlError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CxrtlError(
            f"{what} {path} is a directory without best.safetensors; give a run dir or a .safetensors file"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CxrtlError(
            f"{what} {path} has a corrupt safetensors header; it is damaged or not a safetensors file"
        ) from None
    except OSError as exc:
        raise CxrtlError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise CxrtlError(f"{what} {path} has a corrupt safetensors header")
    return header


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Atomically write a CSV with ``header`` and ``rows`` (Unix line endings, deterministic bytes)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON or raise a one-line error naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrtlError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CxrtlError(f"{what} {path} is not valid JSON ({exc}); regenerate it") from None


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars/arrays by Python values, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalar or array, torch tensor
        return json_safe(obj.tolist())
    return obj
