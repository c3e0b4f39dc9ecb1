"""Lung masks for radiographs: :class:`Segmenter` (one image -> a 0/255 mask at the image's own size) and
:func:`segment_files` (files and folders -> mask PNGs mirroring the input folders)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CxrtlError

log = logging.getLogger(__name__)


class Segmenter:
    """A loaded segmenter run. ``predict(gray)`` -> uint8 0/255 mask with ``gray``'s shape, post-processed."""

    def __init__(self, model, meta: dict, device):
        self.model, self.meta, self.device = model, meta, device
        self.source: Path | None = None
        self.image_size = int(meta["image_size"])
        self.in_chans = int(meta["in_chans"])
        from ..data.preprocess import Preprocess

        self.pp = Preprocess("raw", self.in_chans, self.image_size)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> Segmenter:
        from ..device import resolve_device
        from .model import load_segmenter

        dev = resolve_device(device)
        model, meta = load_segmenter(path, dev)
        seg = cls(model, meta, dev)
        seg.source = Path(path)
        return seg

    def predict_batch(self, grays: Sequence[np.ndarray], clean: bool = True) -> list[np.ndarray]:
        """Grey uint8 images of any sizes -> one 0/255 mask each, at each image's own size."""
        import torch

        from ..data.preprocess import normalize_batch
        from .runtime import probability_to_mask, resize_gray

        if not grays:
            return []
        batch = torch.from_numpy(np.stack([resize_gray(g, self.image_size) for g in grays])).unsqueeze(1)
        with torch.inference_mode():
            logits = self.model(normalize_batch(batch, self.pp, self.device)).float()
            probs = torch.sigmoid(logits).cpu().numpy()
        return [probability_to_mask(p[0], g.shape, clean) for g, p in zip(grays, probs)]

    def predict(self, gray: np.ndarray, clean: bool = True) -> np.ndarray:
        """One grey uint8 image ``[H, W]`` -> its lung mask, uint8 0/255 ``[H, W]``."""
        return self.predict_batch([gray], clean)[0]


def mask_name(image: Path, base: Path | None) -> Path:
    """Where an image's mask goes under the output folder: its path below ``base``, as ``.png``."""
    rel = image.relative_to(base) if base is not None else Path(image.name)
    return rel.with_suffix(".png")


def plan_outputs(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(image, relative mask path) for files and folders; folders are mirrored below their own name."""
    from ..data.inputs import collect_inputs

    plan: list[tuple[Path, Path]] = []
    for p in paths:
        p = Path(p).expanduser()
        images = collect_inputs([p])
        base = p if p.is_dir() else None
        plan.extend((img, mask_name(img, base)) for img in images)
    seen: dict[Path, Path] = {}
    for img, rel in plan:
        if rel in seen:
            raise CxrtlError(
                f"{img} and {seen[rel]} would both write mask {rel}; give them in separate runs or folders"
            )
        seen[rel] = img
    return plan


def segment_files(
    segmenter: Segmenter,
    plan: Sequence[tuple[Path, Path]],
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[int, list[tuple[str, str]]]:
    """Write a mask PNG per (image, relative path) under ``out_dir`` -> (written, [(image, error)])."""
    from PIL import Image
    from tqdm.auto import tqdm

    from ..data.image_io import ImageReadError, load_gray
    from ..fsutil import atomic_path, ensure_dir

    out = Path(out_dir)
    written, failed = 0, []
    bar = tqdm(total=len(plan), desc="masks", unit="image", disable=not progress)
    for start in range(0, len(plan), batch_size):
        chunk, grays = [], []
        for img, rel in plan[start : start + batch_size]:
            try:
                grays.append(load_gray(img))
                chunk.append(rel)
            except ImageReadError as exc:
                failed.append((str(img), str(exc)))
        for rel, mask in zip(chunk, segmenter.predict_batch(grays)):
            ensure_dir((out / rel).parent)
            with atomic_path(out / rel, suffix=".png") as tmp:
                Image.fromarray(mask, mode="L").save(tmp, format="PNG")
            written += 1
        bar.update(len(plan[start : start + batch_size]))
    bar.close()
    return written, failed
