"""What every image reader shares: the error for a file that cannot be decoded, the checks made from a
header before decoding, RGB -> grey and the memory-light scaling of deep images to 8 bits.

Low in the data layer so that the format readers (:mod:`cxrtl.data.image_io` for PNG/JPEG,
:mod:`cxrtl.data.dicom`) use them without importing each other.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CxrtlError

# Longer side over shorter side beyond which a file cannot be a radiograph (refused before decoding).
MAX_ASPECT = 20


class ImageReadError(CxrtlError):
    """An image file that cannot be decoded; ``reason`` is a short phrase such as ``"truncated"``."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str = "replace or remove the file"):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}; {fix}")


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """RGB(A) ``[H, W, 3|4]`` on a 0..255 scale -> uint8 grey, bit for bit as Pillow's ``convert("L")``."""
    # ITU-R 601-2 luma in Pillow's fixed point (0.299/0.587/0.114 as n/65536) and its round-half-up, so a
    # DICOM or array RGB gives the grey its PNG/JPEG would; float weights with np.rint differ by 1 in 1/1800.
    c = np.asarray(rgb, dtype=np.float64)[..., :3]
    luma = (c[..., 0] * 19595 + c[..., 1] * 38470 + c[..., 2] * 7471) / 65536.0
    return np.clip(np.floor(luma + 0.5), 0, 255).astype(np.uint8)


def shape_problem(width: int, height: int, limit: int) -> str | None:
    """Why an image of ``width`` x ``height`` pixels is refused before decoding, or None.

    Too many pixels (a decompression bomb: more than ``limit``, the reader's own), no pixels, or an aspect
    ratio beyond 1:``MAX_ASPECT`` (a radiograph is never a strip).
    """
    if width <= 0 or height <= 0:
        return f"damaged header ({width}x{height} pixels)"
    if width * height > limit:
        return f"decompression bomb ({width}x{height} pixels exceeds the {limit} limit)"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"aspect ratio beyond 1:{MAX_ASPECT} ({width}x{height} pixels), so not a radiograph"
    return None


def shape_fix(problem: str) -> str:
    """The fix that goes with a :func:`shape_problem`."""
    if problem.startswith("aspect"):
        return "crop it to the radiograph, or remove the file"
    if problem.startswith("decompression"):
        return "downsample it first, or remove the file"
    return "replace or remove the file"


def scale_to_u8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``clip(rint((a - lo) * 255 / (hi - lo)), 0, 255)`` as uint8, without a float64 copy of ``a``.

    16-bit and 8-bit integers go through a 65536-entry lookup table (the formula computed once per code),
    anything else in float64 blocks of a million values: the result is bit for bit that of the formula on
    the whole array, at 1 byte per pixel of extra memory instead of 16.
    """
    a = np.asarray(a)
    out = np.empty(a.shape, dtype=np.uint8)
    if hi <= lo:
        out.fill(0)
        return out
    factor = 255.0 / (hi - lo)
    flat_in, flat_out = a.reshape(-1), out.reshape(-1)
    step = 1 << 20  # np.take widens its indices to int64: blocks keep that at 8 MB
    if a.dtype.kind in "ui" and a.dtype.itemsize <= 2:
        native = a.dtype.newbyteorder("=")
        unsigned = np.dtype(f"u{a.dtype.itemsize}")
        codes = np.arange(2 ** (8 * a.dtype.itemsize), dtype=unsigned).view(native).astype(np.float64)
        lut = np.clip(np.rint((codes - lo) * factor), 0, 255).astype(np.uint8)
        for start in range(0, flat_in.size, step):
            block = flat_in[start : start + step].astype(native, copy=False).view(unsigned)
            np.take(lut, block, out=flat_out[start : start + step])
        return out
    for start in range(0, flat_in.size, step):
        block = flat_in[start : start + step].astype(np.float64)
        block -= lo
        block *= factor
        np.rint(block, out=block)
        np.clip(block, 0, 255, out=block)
        flat_out[start : start + step] = block
    return out
