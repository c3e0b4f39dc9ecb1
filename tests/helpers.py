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


class ToyData:
    """uint8 [1,S,S] images whose brightness follows the label (learnable), with a row-aligned .labels array.

    A torch ``Dataset`` (it has ``__len__`` and ``__getitem__``), built without importing torch at module level.
    """

    def __init__(self, n: int, seed: int, size: int = 32):
        import torch

        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 3, (n,), generator=g)
        self.x = (torch.rand(n, 1, size, size, generator=g) * 90 + y.view(-1, 1, 1, 1) * 70).to(torch.uint8)
        self.labels = y.numpy().astype(np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i])


SEGMENTER_META = {
    "encoder": "tu-mobilenetv3_small_100",
    "in_chans": 1,
    "decoder_channels": [64, 32, 16, 8, 8],
    "image_size": 64,
}


def make_segmenter_run(run: Path, seed: int = 3, **meta) -> Path:
    """An untrained lung U-Net saved as a segmenter run directory (``meta`` adds to its metadata)."""
    import torch

    from cxrtl.segmentation.model import build_segmenter, save_segmenter

    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_segmenter(SEGMENTER_META["encoder"], 1, False)
    save_segmenter(run / "best", model, {**SEGMENTER_META, **meta})
    return run


def set_decisions(weights: Path, **parts) -> Path:
    """Store decision settings (``temperature=Temperature(1.5)``, ...) in a checkpoint's record, as evaluate does."""
    from cxrtl.checkpoint import read_meta
    from cxrtl.decisions import read_decisions, write_decisions

    weights = Path(weights)
    if weights.is_dir():
        weights = weights / "best.safetensors"
    return write_decisions(weights, read_decisions(weights, read_meta(weights)).replace(**parts))


def export_masked_bundle(run, seg_run, bundle):
    """``cxrtl export RUN --bundle BUNDLE --segmenter SEG_RUN`` (torchscript exporter: fast, deterministic)."""
    from cxrtl.cli import main

    argv = [
        "export",
        str(run),
        "--bundle",
        str(bundle),
        "--segmenter",
        str(seg_run),
        "--exporter",
        "torchscript",
    ]
    assert main(argv) == 0
    return bundle
