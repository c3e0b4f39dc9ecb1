"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def make_root(root: Path, per_class: int = 6, size: int = 32, classes=("NORMAL", "PNEUMONIA")) -> Path:
    """A tiny class-folder dataset of PNGs whose classes differ in texture (so a model can learn them)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c, label in enumerate(classes):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            f = 2 + 3 * rng.random() + 2 * c
            img = 128 + 60 * np.sin(xx * f * np.pi + rng.random()) * np.cos(yy * (f + c) * np.pi)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                root / label / f"{label.lower()}-{i}.png", compress_level=1
            )
    return root


def bomb_png(path: Path, side: int = 200_000) -> Path:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path
