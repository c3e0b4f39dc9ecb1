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
    predictor,
    uploads: Sequence[Upload],
    cam: bool = False,
    image: bool = False,
    batch_size: int = 16,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """One JSON row per upload, as ``cxrtl predict --format json`` writes them, with ``path`` = file name.

    ``cam`` adds ``cam_png`` (base64 Grad-CAM overlay on the image as sent, at most 512 px, like the overlays
    ``cxrtl predict --cam`` writes at the image's own size) and ``image`` adds ``image_png``
    (the decoded image, at most 512 px, so a page can show a DICOM) to each row that was predicted.
    ``max_pixels``: the decoded pixels this request may cost, read from each file's header before it is
    decoded; the files past it get an error row. Each file is decoded once, and the model (Grad-CAM
    included) sees at most ``batch_size`` of them at a time.
    """
    from ..inference.predict import Prediction

    batch_size = max(1, int(batch_size))
    with as_paths(uploads) as paths:
        rows = [Prediction(path=up.name) for up in uploads]
        extra: list[dict[str, Any]] = [{} for _ in uploads]
        thumbs: dict[int, np.ndarray] = {}
        budget = _PixelBudget(max_pixels)
        for start in range(0, len(paths), batch_size):
            ok, inputs = [], []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    budget.take(paths[i])
                    gray = predictor.load(paths[i])
                    inputs.append(predictor.prepare(gray))
                    if image or cam:
                        thumbs[i] = thumbnail(gray)
                    if image:
                        extra[i]["image_png"] = png_base64(thumbs[i])
                    del gray
                    ok.append(i)
                except CxrtlError as exc:
                    rows[i].error = str(exc)
                except MemoryError:
                    rows[i].error = f"{paths[i]}: out of memory while decoding; the image is too large"
                except Exception as exc:  # noqa: BLE001  (never let one odd file stop the request)
                    rows[i].error = f"{paths[i]}: cannot read ({type(exc).__name__}: {exc})"
            if not ok:
                continue
            batch = np.stack(inputs)
            probs, scores = predictor.predict_prepared_ood(batch)
            for j, i in enumerate(ok):  # the same fields as Predictor.predict_files' rows
                predictor.fill_row(rows[i], probs[j], None if scores is None else float(scores[j]))
            if cam:
                add_cams(predictor, batch, [extra[i] for i in ok], [thumbs.pop(i) for i in ok])
        out = []
        for up, path, row, more in zip(uploads, paths, rows, extra):
            d = row.to_dict()
            if d.get("error"):
                d["error"] = str(d["error"]).replace(path, up.name)
            else:
                d.update(more)
            out.append(d)
    return out


class _PixelBudget:
    """The decoded pixels one request may still cost; each file's size comes from its header."""

    def __init__(self, limit: int | None):
        self.limit, self.used = limit, 0

    def take(self, path: str) -> None:
        if self.limit is None:
            return
        from ..data.image_io import image_size

        w, h = image_size(path)
        if self.used + w * h > self.limit:
            raise CxrtlError(
                f"{path}: not decoded, the request's pixel budget is spent ({self.used + w * h} of "
                f"{self.limit} pixels with this {w}x{h} image); send fewer or smaller images per request, "
                "or start the server with a larger --max-pixels-per-request"
            )
        self.used += w * h


def add_cams(
    predictor, batch: np.ndarray, rows: Sequence[dict[str, Any]], images: Sequence[np.ndarray]
) -> None:
    """Grad-CAM of each prepared input's predicted class as ``cam_png``, drawn on ``images`` (the uploads as
    sent, thumbnailed): the CAM of the model's crop is placed back where the crop came from. Else
    ``cam_error`` in each row."""
    from ..evaluation.cam import cam_to_original, grad_cam, overlay

    try:
        cams, indices = grad_cam(predictor.torch_model, predictor.backend.normalize(batch))
    except CxrtlError as exc:
        for row in rows:
            row["cam_error"] = str(exc)
        return
    for row, image, c, k in zip(rows, images, cams, indices):
        row["cam_png"] = png_base64(overlay(image, cam_to_original(c, image.shape, predictor.spec)))
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
