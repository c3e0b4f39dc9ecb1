"""DICOM radiographs to the 8-bit grey images the models see: modality LUT, VOI LUT/window, MONOCHROME1.

pydicom and the decoder plugins for compressed pixel data (pylibjpeg with its libjpeg and openjpeg
plugins: JPEG Baseline/Extended 12-bit/Lossless, JPEG-LS, JPEG 2000, HTJ2K) are the optional ``dicom``
extra, imported only when a DICOM is actually read. Every failure is a :class:`DicomReadError` whose
``reason`` starts with one of :data:`REASONS`, so a folder of hospital files can be summarised by cause.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import CxrtlError
from .pixels import ImageReadError, rgb_to_gray, scale_to_u8, shape_fix, shape_problem

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
# Same ceiling as Pillow's decompression-bomb error (2 x MAX_IMAGE_PIXELS, about 179 million pixels).
MAX_PIXELS = 2 * 89_478_485
EXTRA = "pip install 'cxrtl[dicom]'"
# The first words of every refusal, one per cause (tests and summaries group by them).
REASONS = (
    "not a DICOM file",
    "not an image object",
    "damaged or truncated",
    "no decoder installed",
    "unsupported",
    "decompression bomb",
)


class DicomReadError(ImageReadError):
    """A DICOM file that cannot be turned into a grey image; ``reason`` starts with one of :data:`REASONS`."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str = "replace or remove the file"):
        super().__init__(path, reason, fix)


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
        raise CxrtlError(f"reading DICOM files needs pydicom >= 3; install it with `{EXTRA}`") from None
    return pydicom


def read_header(path: str | os.PathLike):
    """The dataset of ``path`` without its pixel data, refusing files that are no image (header-only, cheap).

    Raises:
        DicomReadError: not DICOM, no pixel data, damaged header, bomb dimensions, or no decoder.
    """
    return _read(Path(path), pixels=False)


def header_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot give an image, judged from its header alone (for ``data check``), or None."""
    try:
        read_header(path)
    except ImageReadError as exc:
        return exc.reason
    except CxrtlError as exc:  # pydicom itself is missing
        return str(exc)
    return None


def load_dicom_gray(path: str | os.PathLike) -> np.ndarray:
    """Decode a DICOM radiograph to uint8 ``[H, W]`` the way a viewer would display it."""
    path = Path(path)
    ds = _read(path, pixels=True)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:  # decode only the frame used
            from pydicom.pixels import pixel_array

            log.warning("%s: multi-frame DICOM (%d frames), using the first frame", path, frames)
            arr = pixel_array(ds, index=0)
        else:
            arr = ds.pixel_array
        gray = _to_gray_u8(arr, ds)
    except DicomReadError:
        raise
    except Exception as exc:  # noqa: BLE001  (decoders raise many types)
        raise _decode_error(path, ds, exc) from None
    return gray


def _read(path: Path, pixels: bool):
    """dcmread with the header checks shared by decoding and ``data check``."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    def read(force: bool):  # header only: large values (the pixel data) are located, not loaded
        return pydicom.dcmread(path, force=force, defer_size=None if pixels else 4096)

    forced = False
    try:
        try:
            ds = read(force=False)
        except InvalidDicomError:
            ds, forced = read(force=True), True  # no preamble/DICM magic: still try
    except FileNotFoundError:
        raise DicomReadError(path, "file not found", "check the path") from None
    except Exception as exc:  # noqa: BLE001  (pydicom raises many types on malformed files)
        raise DicomReadError(path, f"not a DICOM file ({_short(exc)})") from None
    if forced and "PixelData" not in ds and "SOPClassUID" not in ds:
        raise DicomReadError(path, "not a DICOM file (no DICM header, no DICOM elements)")
    _check_header(path, ds)
    return ds


def _check_header(path: Path, ds) -> None:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomReadError(
            path,
            "not an image object (no pixel data: a report, plan, waveform or index)",
            "pass the image series, not a report or structured document",
        )
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise DicomReadError(path, f"damaged or truncated (bad Rows/Columns: {_short(exc)})") from None
    if rows <= 0 or cols <= 0:
        raise DicomReadError(path, "damaged or truncated (no valid Rows/Columns in the header)")
    if rows * cols > MAX_PIXELS:
        raise DicomReadError(
            path,
            f"decompression bomb ({cols}x{rows} pixels is above the {MAX_PIXELS} pixel safety limit)",
            "downsample it first",
        )
    problem = shape_problem(cols, rows, MAX_PIXELS)  # a strip beyond 1:20 is no radiograph
    if problem:
        raise DicomReadError(path, problem, shape_fix(problem))
    _check_decoder(path, ds)


def _check_decoder(path: Path, ds) -> None:
    """Refuse a transfer syntax that no installed plugin can decode, naming the extra that adds one."""
    from pydicom.pixels.decoders.base import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None or not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DicomReadError(
            path,
            f"unsupported transfer syntax ({uid.name}: no decoder exists for it in pydicom)",
            "convert it to an uncompressed DICOM or PNG",
        ) from None
    if not decoder.is_available:
        raise DicomReadError(path, f"no decoder installed for {uid.name} pixel data", EXTRA)


def _decode_error(path: Path, ds, exc: Exception) -> DicomReadError:
    """One line for a pixel-data failure; pydicom's multi-line 'all plugins failed' text joined up."""
    prefix = "Unable to decode as exceptions were raised by all available plugins:"
    parts = [p.strip() for p in str(exc).removeprefix(prefix).split("\n") if p.strip()] or [repr(exc)]
    text = "; ".join(" ".join(p.split()) for p in parts)
    text = text if len(text) <= 240 else text[:237].rsplit(" ", 1)[0] + " ..."
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    what = f"{uid.name} pixel data" if uid is not None and uid.is_compressed else "pixel data"
    if all("decompression bomb" in p for p in parts):  # a plugin's own safety limit, e.g. Pillow's
        return DicomReadError(path, f"decompression bomb ({what}: {text})", "downsample it first")
    if "photometric" in text.lower() or isinstance(exc, NotImplementedError):
        return DicomReadError(path, f"unsupported ({what}: {text})", "convert it to PNG")
    return DicomReadError(path, f"damaged or truncated ({what}: {text})")


def _to_gray_u8(arr: np.ndarray, ds) -> np.ndarray:
    """Apply the display pipeline of DICOM PS3.4 (modality LUT -> VOI LUT -> polarity) and fit in 8 bits."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples == 3 or arr.ndim == 3:  # colour radiograph (rare): the grey its PNG would give
        rgb = arr.astype(np.float64)
        if rgb.max() > 255:  # more than 8 bits per sample: onto the 0..255 scale first
            rgb = rgb * (255.0 / rgb.max())
        return rgb_to_gray(rgb)
    if arr.ndim != 2:
        raise DicomReadError(
            str(ds.get("filename", "") or "DICOM"),
            f"unsupported (pixel array of shape {arr.shape}; expected a 2-D image)",
            "convert it to PNG",
        )
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:  # nearly every radiograph
        return _gray_by_lookup(arr, ds, photometric)

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


def _gray_by_lookup(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    """:func:`_to_gray_u8` for 8/16-bit stored values: the display pipeline run once on each of the 65536
    possible codes, then one table lookup per pixel.

    Bit for bit what the pipeline gives on the whole array (it is pointwise), at 1 byte per pixel instead of
    the float64 copies pydicom's LUT functions make (a 9000 x 9000 16-bit image: ~0.1 GB, not 2.8 GB).
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    native = arr.dtype.newbyteorder("=")
    unsigned = np.dtype(f"u{arr.dtype.itemsize}")
    index = np.ascontiguousarray(arr, dtype=native).view(unsigned).reshape(-1)
    step = 1 << 20  # blocks: numpy widens index arrays to int64
    present = np.zeros(2 ** (8 * arr.dtype.itemsize), dtype=bool)
    for start in range(0, index.size, step):
        present[index[start : start + step]] = True
    codes = np.arange(present.size, dtype=unsigned).view(native)
    values = apply_modality_lut(codes, ds)
    bounds = _voi_bounds(ds)
    if bounds is not None:
        values = apply_voi_lut(values, ds).astype(np.float64)
        lo, hi = bounds
    else:
        used = values[present]
        if int(ds.get("BitsStored", 8) or 8) <= 8 and used.min() >= 0 and used.max() <= 255:
            lo, hi = 0.0, 255.0  # already 8-bit display values: keep them exactly
        else:  # high bit depth without a display window: stretch the values present to the full 8 bits
            lo, hi = float(used.min()), float(used.max())
    lut = _scale(values, lo, hi)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that 0 is black, as in every PNG/JPEG
        lut = 255 - lut
    out = np.empty(index.size, dtype=np.uint8)
    for start in range(0, index.size, step):
        np.take(lut, index[start : start + step], out=out[start : start + step])
    return out.reshape(arr.shape)


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
    return scale_to_u8(np.asarray(values), lo, hi)  # float64 per block of values, never the whole array


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
