"""Safe image decoding to 8-bit grey, and the one preprocessing function shared by cache, predict and export.

Every image a user points cxrtl at goes through :func:`load_gray`; every model input is made by
:func:`prepare_image`, so training and inference preprocess identically (paper §III-B, §III-D).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import CxrtlError
from . import pixels
from .pixels import MAX_ASPECT, ImageReadError, scale_to_u8, shape_fix

# Magic bytes of the raster formats a chest radiograph download may hold -> Pillow format name.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# The file name extensions of each format cxrtl reads: the one list behind every folder walk.
SUFFIXES_OF_FORMAT = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
    "WEBP": (".webp",),
    "DICOM": (".dcm", ".dicom"),
}
RASTER_SUFFIXES = tuple(s for fmt, suffixes in SUFFIXES_OF_FORMAT.items() if fmt != "DICOM" for s in suffixes)
IMAGE_SUFFIXES = RASTER_SUFFIXES + SUFFIXES_OF_FORMAT["DICOM"]  # everything `predict` picks up in a folder
# The only Pillow plugins cxrtl lets open a file (DICOM has its own reader): never EPS (Ghostscript), PSD,
# ICO, SGI... whatever the file's first bytes claim.
PILLOW_FORMATS = tuple(fmt for fmt in SUFFIXES_OF_FORMAT if fmt != "DICOM")
SUPPORTED = "PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM"
# Pillow's default limit (about 89 Mpixel); a chest radiograph is at most ~10 Mpixel.
DEFAULT_MAX_PIXELS = 89_478_485


def sniff_format(head: bytes) -> str | None:
    """The image format named by a file's first bytes (``"PNG"``, ``"JPEG"``, ``"DICOM"``...), or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    return None


def looks_truncated(fmt: str, tail: bytes) -> bool:
    """Cheap end-marker test: a PNG ends with its IEND chunk, a JPEG with an EOI marker."""
    if fmt == "PNG":
        return b"IEND" not in tail[-64:]
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail
    return False


def header_size(fmt: str, head: bytes) -> tuple[int, int] | None:
    """(width, height) read from the first bytes of a PNG (IHDR) or JPEG (SOF marker), else None."""
    if fmt == "PNG" and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if fmt == "JPEG":
        i = 2
        while i + 9 <= len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            length = int.from_bytes(head[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(head[i + 7 : i + 9], "big"), int.from_bytes(head[i + 5 : i + 7], "big")
            i += 2 + length
    return None


def max_pixels() -> int:
    """The decompression-bomb limit: Pillow's ``Image.MAX_IMAGE_PIXELS`` (about 89 Mpixel by default)."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else DEFAULT_MAX_PIXELS


def shape_problem(width: int, height: int, limit: int | None = None) -> str | None:
    """:func:`cxrtl.data.pixels.shape_problem` with Pillow's decompression-bomb limit by default."""
    return pixels.shape_problem(width, height, max_pixels() if limit is None else limit)


def open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open`` restricted to :data:`PILLOW_FORMATS` (reads the header only; the caller closes it).

    Raises:
        ImageReadError: not one of the supported formats (an EPS never reaches Ghostscript), or missing.
    """
    try:
        return Image.open(path, formats=PILLOW_FORMATS)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, f"not an image in a supported format ({SUPPORTED})") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding pixels (DICOM too).

    Raises:
        ImageReadError: what :func:`load_gray` would refuse before decoding: an unsupported format, a
            decompression bomb, a strip beyond 1:20, a damaged header.
    """
    path = Path(path)
    if _looks_dicom(path):
        try:
            from .dicom import read_header
        except ModuleNotFoundError:
            _load_dicom(path)  # the one-line "install cxrtl[dicom]" error
            raise
        ds = read_header(path)  # refuses bombs and strips with the DICOM reader's own limits
        return int(ds.Columns), int(ds.Rows)
    try:
        with open_image(path) as im:
            w, h = im.size
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"corrupt ({exc})") from None
    problem = shape_problem(w, h)
    if problem:
        raise ImageReadError(path, problem, shape_fix(problem))
    return w, h


def _looks_dicom(path: Path) -> bool:
    """A .dcm/.dicom name, or the DICM magic at byte 128 (checked here: dicom.py may not be importable)."""
    if path.suffix.lower() in SUFFIXES_OF_FORMAT["DICOM"]:
        return True
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(132)) == "DICOM"
    except OSError:
        return False


def _load_dicom(path: Path) -> np.ndarray:
    try:
        from .dicom import load_dicom_gray  # imports pydicom only when it reads; names the extra if missing
    except ModuleNotFoundError as exc:
        if exc.name in ("cxrtl.data.dicom", "pydicom"):
            raise CxrtlError(
                f"{path} is a DICOM file and DICOM support is not installed; run `pip install cxrtl[dicom]`"
            ) from None
        raise
    return load_dicom_gray(path)


def _to_gray_array(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 [H, W]. 16-bit and float images are min-max windowed to 0..255."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Min-max from Pillow, then strips of about 4 million pixels: never a whole-image copy beyond the
        # decoded image and the uint8 result (a 9000 x 9000 16-bit PNG: 160 + 80 MB, not 1.1 GB).
        extrema = im.getextrema()  # (min, max) for these single-band modes
        lo, hi = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
        w, h = im.size
        out = np.empty((h, w), dtype=np.uint8)
        rows = max(1, (1 << 22) // max(1, w))
        for top in range(0, h, rows):
            strip = np.asarray(im.crop((0, top, w, min(h, top + rows))))
            out[top : top + strip.shape[0]] = scale_to_u8(strip, lo, hi)
        return out
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGB" if mode == "RGBA" else "L")  # drop alpha, as ImageFolder's convert does
    return np.asarray(im.convert("L"), dtype=np.uint8)


def load_gray(
    path: str | os.PathLike, target_short_side: int | None = None, info: dict | None = None
) -> np.ndarray:
    """Decode ``path`` to uint8 ``[H, W]`` grey, refusing decompression bombs and broken files.

    Args:
        target_short_side: if given, a large JPEG is decoded at a reduced DCT scale whose shorter side
            stays at least twice this, so a later resize to this side matches a full decode to within a
            few grey levels (at 2-4x the speed).
        info: if given, filled with ``mode`` (the stored mode) and ``drafted`` (the decode scale).

    Raises:
        ImageReadError: truncated, corrupt, not an image, or too many pixels.
    """
    path = Path(path)
    if _looks_dicom(path):
        arr = _load_dicom(path)
        if info is not None:
            info.update(mode="DICOM", drafted=False)
        return arr
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_image(path) as im:
                w, h = im.size
                problem = shape_problem(w, h)
                if problem:
                    raise ImageReadError(path, problem, shape_fix(problem))
                if info is not None:
                    info["mode"] = im.mode
                    info["drafted"] = False
                if im.format == "JPEG" and target_short_side and min(w, h) >= 4 * target_short_side:
                    # DCT-domain downscaling only to twice the target: the bilinear resize that follows
                    # then does the final filtering, and the result stays within a few grey levels of
                    # a full decode (coarser draft scales differ by up to ~100 at sharp edges).
                    scale = 2 * target_short_side / min(w, h)
                    im.draft("L", (math.ceil(w * scale), math.ceil(h * scale)))
                    if info is not None:
                        info["drafted"] = im.size != (w, h)
                # An opened image is at its first frame: no n_frames (it walks every frame of a GIF).
                im.load()
                return _to_gray_array(im)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg or isinstance(exc, EOFError) else f"corrupt ({msg})"
        raise ImageReadError(path, reason) from None


def apply_mask(img_u8: np.ndarray, mask_u8: np.ndarray) -> np.ndarray:
    """Lung masking, paper eq. 9: ``C = A * max(0, B) / 255`` with the mask resized to the image (nearest)."""
    img = np.asarray(img_u8)
    mask = np.asarray(mask_u8)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != img.shape:
        m = np.clip(mask, 0, 255).astype(np.uint8)
        mask = np.asarray(Image.fromarray(m).resize((img.shape[1], img.shape[0]), Image.Resampling.NEAREST))
    b = np.clip(mask.astype(np.int32), 0, 255)
    return ((img.astype(np.int32) * b + 127) // 255).astype(np.uint8)


def _shorter_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    # torchvision Resize(int): shorter side -> size, longer side truncated to int(size * long / short).
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def _resize_shorter(im: Image.Image, size: int, resample) -> Image.Image:
    new = _shorter_side_size(*im.size, size)
    return im if new == im.size else im.resize(new, resample)


def _center_crop(im: Image.Image, size: int) -> Image.Image:
    # torchvision CenterCrop: offsets round((dim - size) / 2).
    w, h = im.size
    left = round((w - size) / 2.0)
    top = round((h - size) / 2.0)
    return im.crop((left, top, left + size, top + size))


def _resize_crop(im: Image.Image, resize: int, crop: int, resample) -> Image.Image:
    """torchvision ``CenterCrop(crop)(Resize(resize)(im))``, never larger than ``MAX_ASPECT`` crops in memory.

    Up to a 1:``MAX_ASPECT`` aspect ratio (every file :func:`load_gray` accepts) the whole image is resized
    and then cropped, bit for bit as torchvision does. Beyond it (an array given to the Python API) only the
    crop is resampled, from its box in source coordinates, so a 1 x 200000 strip costs the crop's memory,
    not the 256 x 51-million resize (Pillow then samples within 1 grey level of the full resize).
    """
    w, h = im.size
    new_w, new_h = _shorter_side_size(w, h, resize)
    if max(new_w, new_h) <= MAX_ASPECT * resize:
        return _center_crop(_resize_shorter(im, resize, resample), crop)
    left, top = round((new_w - crop) / 2.0), round((new_h - crop) / 2.0)
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return im.resize((crop, crop), resample, box=box)


def prepare_image(gray_u8: np.ndarray, pp, mask_u8: np.ndarray | None = None) -> np.ndarray:
    """Grey image -> model-ready uint8 ``[S, S]``: mask (if ``pp.input == "masked"``), resize, centre-crop.

    Resize the shorter side to ``pp.resize_size`` (bilinear) and centre-crop ``pp.image_size``, exactly as
    torchvision's ``Resize``/``CenterCrop`` on a PIL image do (see :func:`_resize_crop` for strips).
    """
    img = np.asarray(gray_u8, dtype=np.uint8)
    if pp.input == "masked":
        if mask_u8 is None:
            raise CxrtlError(
                "masked input needs a lung mask for every image; use --input raw or provide masks"
            )
        img = apply_mask(img, mask_u8)
    im = _resize_crop(Image.fromarray(img), pp.resize_size, pp.image_size, Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def prepare_mask(mask_u8: np.ndarray, image_shape: tuple[int, int], pp) -> np.ndarray:
    """A lung mask brought to the model input's geometry (nearest): for saliency-inside-lung fractions."""
    mask = np.asarray(mask_u8)
    if mask.ndim == 3:
        mask = mask[..., 0]
    im = Image.fromarray(np.clip(mask, 0, 255).astype(np.uint8))
    h, w = image_shape[:2]
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.NEAREST)
    im = _resize_shorter(im, pp.resize_size, Image.Resampling.NEAREST)
    return np.asarray(_center_crop(im, pp.image_size), dtype=np.uint8)
