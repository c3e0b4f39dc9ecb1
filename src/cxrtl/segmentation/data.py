"""Image/mask pairs at the segmenter's input size: the whole radiograph resized to ``S x S`` (no crop),
so a predicted mask maps back onto every pixel of the original image."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.image_io import ImageReadError, load_gray
from ..data.records import DatasetIndex, Record
from ..errors import CxrtlError
from .runtime import resize_gray


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask to ``(height, width)`` with nearest neighbour, kept 0/255."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    im = Image.fromarray(((m > 127).astype(np.uint8)) * 255)
    return np.asarray(im.resize((size[1], size[0]), Image.Resampling.NEAREST))


def require_masks(index: DatasetIndex, records: list[Record]) -> None:
    """One-line error when the dataset has no masks (naming those that do) or some images lack one."""
    have = [r for r in records if r.mask_path and index.abspath(r.mask_path).is_file()]
    if not have:
        raise CxrtlError(
            f"{index.root} ({index.layout}) has no lung masks; train the segmenter on the COVID-19 "
            "Radiography Database (its */masks folders) or a CSV manifest with a mask_path column"
        )
    if len(have) < len(records):
        raise CxrtlError(
            f"{len(records) - len(have)} of {len(records)} images in {index.root} have no lung mask "
            "file; restore the masks or list only masked images in a CSV manifest"
        )


def load_pairs(index: DatasetIndex, records: list[Record], size: int, progress: bool = False):
    """-> (images uint8 [N, S, S], masks uint8 0/1 [N, S, S], kept records); undecodable pairs are skipped."""
    from tqdm.auto import tqdm

    def one(r: Record):
        try:
            img = load_gray(index.abspath(r.path), target_short_side=size)
            assert r.mask_path is not None  # checked by require_masks
            mask = load_gray(index.abspath(r.mask_path))
        except ImageReadError:
            return None
        return resize_gray(img, size), (resize_mask(mask, (size, size)) > 0).astype(np.uint8)

    with ThreadPoolExecutor(max_workers=4) as pool:
        out = list(tqdm(pool.map(one, records), total=len(records), desc="decode", disable=not progress))
    kept = [(r, o) for r, o in zip(records, out) if o is not None]
    if not kept:
        return np.zeros((0, size, size), np.uint8), np.zeros((0, size, size), np.uint8), []
    return (
        np.stack([o[0] for _, o in kept]),
        np.stack([o[1] for _, o in kept]),
        [r for r, _ in kept],
    )


class PairDataset(Dataset):
    """(uint8 image ``[1, S, S]``, float mask ``[1, S, S]``); ``flip`` mirrors both at random (training)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, flip: bool = False):
        self.images, self.masks, self.flip = images, masks, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.array(self.images[i], copy=True)).unsqueeze(0)
        mask = torch.from_numpy(np.array(self.masks[i], copy=True)).unsqueeze(0).float()
        if self.flip and torch.rand(()) < 0.5:
            img, mask = img.flip(-1), mask.flip(-1)
        return img, mask
