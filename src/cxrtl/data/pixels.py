"""What every image reader shares: the error for a file that cannot be decoded, and RGB -> grey.

Low in the data layer so that the format readers (:mod:`cxrtl.data.image_io` for PNG/JPEG,
:mod:`cxrtl.data.dicom`) use them without importing each other.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CxrtlError


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
