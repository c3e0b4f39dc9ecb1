"""DICOM radiographs to the 8-bit grey images the models see: modality LUT, VOI LUT/window, MONOCHROME1.

pydicom is optional (``pip install 'cxrtl[dicom]'``) and imported only when a DICOM is actually read.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import CxrtlError

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
# Same ceiling as Pillow's decompression-bomb error (2 x MAX_IMAGE_PIXELS, about 179 million pixels).
MAX_PIXELS = 2 * 89_478_485


class DicomReadError(CxrtlError):
    """A DICOM file that cannot be turned into a grey image (no pixel data, unsupported, corrupt)."""


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a .dcm/.dicom name or a file carrying the DICM magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise CxrtlError(
            "reading DICOM files needs pydicom >= 3; install it with `pip install 'cxrtl[dicom]'`"
        ) from None
    return pydicom


def load_dicom_gray(path: str | os.PathLike) -> np.ndarray:
    """Decode a DICOM radiograph to uint8 ``[H, W]`` the way a viewer would display it."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)  # no preamble/DICM magic: still try
    except FileNotFoundError:
        raise DicomReadError(f"{path}: file does not exist") from None
    except Exception as exc:  # noqa: BLE001  (pydicom raises many types on malformed files)
        raise DicomReadError(f"{path}: not a readable DICOM file ({_short(exc)})") from None

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomReadError(
            f"{path}: DICOM file has no pixel data (not an image object); "
            "pass the image series, not a report or structured document"
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise DicomReadError(f"{path}: DICOM file has no valid Rows/Columns; the file is damaged")
    if rows * cols > MAX_PIXELS:
        raise DicomReadError(
            f"{path}: DICOM image is {cols}x{rows} pixels, above the {MAX_PIXELS} pixel "
            "safety limit (decompression bomb?); downsample it first"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
            gray = _to_gray_u8(arr, ds)
    except DicomReadError:
        raise
    except Exception as exc:  # noqa: BLE001  (decoders raise many types)
        raise DicomReadError(
            f"{path}: cannot decode DICOM pixel data ({_short(exc)}); if it is compressed, "
            "install a decoder plugin (e.g. pylibjpeg) or convert it to PNG"
        ) from None
    return gray


def _to_gray_u8(arr: np.ndarray, ds) -> np.ndarray:
    """Apply the display pipeline of DICOM PS3.4 (modality LUT -> VOI LUT -> polarity) and fit in 8 bits."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        log.warning("multi-frame DICOM (%d frames): using the first frame", frames)
        arr = arr[0]

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples == 3 or arr.ndim == 3:  # colour radiograph (rare): the grey its PNG would give
        from .image_io import rgb_to_gray  # here, not at the top: image_io imports this module

        rgb = arr.astype(np.float64)
        if rgb.max() > 255:  # more than 8 bits per sample: onto the 0..255 scale first
            rgb = rgb * (255.0 / rgb.max())
        return rgb_to_gray(rgb)
    if arr.ndim != 2:
        raise DicomReadError(f"unexpected DICOM pixel array shape {arr.shape}; expected a 2-D image")

    values = apply_modality_lut(arr, ds)
    bounds = _voi_bounds(ds)
    if bounds is not None:
        values = apply_voi_lut(values, ds).astype(np.float64)
        lo, hi = bounds
    elif int(ds.get("BitsStored", 8) or 8) <= 8 and values.min() >= 0 and values.max() <= 255:
        lo, hi = 0.0, 255.0  # already 8-bit display values: keep them exactly
    else:
        # High bit depth without a display window: stretch the values present to the full 8 bits.
        lo, hi = float(values.min()), float(values.max())
    gray = _scale(values, lo, hi)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that 0 is black, as in every PNG/JPEG
        gray = 255 - gray
    return gray


def _voi_bounds(ds) -> tuple[float, float] | None:
    """Output range of the dataset's VOI transform (window or LUT), or None when it has none."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        entries, first = int(seq[0].LUTDescriptor[0]) or 65536, int(seq[0].LUTDescriptor[1])
        out = apply_voi_lut(np.arange(first - 1, first + entries + 1, dtype=np.int64), ds)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        out = apply_voi_lut(np.array([-1e30, 1e30]), ds)  # the window's floor and ceiling
    else:
        return None
    return float(np.min(out)), float(np.max(out))


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
