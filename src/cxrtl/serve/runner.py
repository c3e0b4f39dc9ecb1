"""Uploaded bytes -> the rows of ``cxrtl predict --format json``, decoded by the same code, never on disk.

Each upload is placed in an anonymous in-memory file (Linux ``memfd_create``) and handed to
:meth:`Predictor.predict_files` by its ``/proc/self/fd`` path, so the server decodes PNG, JPEG and DICOM
exactly as ``cxrtl predict`` does (same pixel limits, same error rows) without writing a byte to disk.
Messages naming that path are rewritten to name the uploaded file instead.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrtlError
from .uploads import Upload

PREVIEW_SIDE = 512  # longest side of the server-rendered preview (DICOM cannot be shown by a browser)


def in_memory_files_supported() -> bool:
    """True where uploads can be decoded without touching the disk (Linux: memfd + /proc/self/fd)."""
    return hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir()


@contextlib.contextmanager
def as_paths(uploads: Sequence[Upload]) -> Iterator[list[str]]:
    """Paths from which the decoders can read each upload; closed (and gone) when the block ends.

    Elsewhere than Linux the bytes go to a private temporary folder that is deleted at once (the server
    warns about this at start).
    """
    if in_memory_files_supported():
        fds = []
        try:
            for up in uploads:
                fd = os.memfd_create("cxrtl-upload", getattr(os, "MFD_CLOEXEC", 0))
                fds.append(fd)
                _write_all(fd, up.data)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="cxrtl-serve-") as tmp:
        paths = []
        for i, up in enumerate(uploads):
            p = Path(tmp) / f"upload-{i}"
            p.write_bytes(up.data)
            paths.append(str(p))
        yield paths


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def predict_uploads(
    predictor, uploads: Sequence[Upload], cam: bool = False, image: bool = False, batch_size: int = 16
) -> list[dict[str, Any]]:
    """One JSON row per upload, as ``cxrtl predict --format json`` writes them, with ``path`` = file name.

    ``cam`` adds ``cam_png`` (base64 Grad-CAM overlay on the model input) and ``image`` adds ``image_png``
    (the decoded image, at most 512 px, so a page can show a DICOM) to each row that was predicted.
    """
    with as_paths(uploads) as paths:
        rows = predictor.predict_files(paths, batch_size=batch_size)
        out = []
        for up, path, row in zip(uploads, paths, rows):
            d = row.to_dict()
            d["path"] = up.name
            if d.get("error"):
                d["error"] = str(d["error"]).replace(path, up.name)
            out.append(d)
        good = [i for i, d in enumerate(out) if not d.get("error")]
        if image:
            for i in good:
                out[i]["image_png"] = png_base64(thumbnail(predictor.load(paths[i])))
        if cam and good:
            add_cams(predictor, [paths[i] for i in good], [out[i] for i in good])
    return out


def add_cams(predictor, paths: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Grad-CAM of each row's predicted class as ``cam_png``; a model without a usable map gets ``cam_error``."""
    from ..evaluation.cam import grad_cam, overlay

    batch = np.stack([predictor.prepare(p) for p in paths])
    try:
        cams, indices = grad_cam(predictor.torch_model, predictor.backend.normalize(batch))
    except CxrtlError as exc:
        for row in rows:
            row["cam_error"] = str(exc)
        return
    for row, inp, c, k in zip(rows, batch, cams, indices):
        row["cam_png"] = png_base64(overlay(inp, c))
        row["cam_class"] = predictor.classes[k]


def thumbnail(gray: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.asarray(gray, dtype=np.uint8))
    im.thumbnail((side, side))
    return np.asarray(im)


def png_base64(arr: np.ndarray) -> str:
    """A uint8 grey or RGB array as a base64 PNG (no data: prefix)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")
