"""Torch datasets over the uint8 cache, and :func:`prepare_data`: root + preprocessing -> ready datasets."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import CxrtlError
from .cache import ImageCache, build_cache, check_masks
from .preprocess import Preprocess
from .records import SPLITS, DatasetIndex, Record, Skipped
from .sources import load_dataset
from .splits import make_split, read_split_csv

logger = logging.getLogger(__name__)


class CachedDataset(Dataset):
    """(uint8 tensor ``[1, S, S]``, int label) per record, read from the cache; ``labels`` is row aligned.

    Records whose image failed to decode at cache time are left out (with a warning).
    """

    def __init__(self, cache: ImageCache, records: list[Record], class_to_idx: dict[str, int]):
        usable = [r for r in records if r.path in cache.row_of and r.path not in cache.failed]
        missing = [r.path for r in records if r.path not in cache.row_of]
        if missing:
            raise CxrtlError(
                f"{len(missing)} record(s) are not in cache {cache.dir} (e.g. {missing[0]}); "
                "rebuild it with `cxrtl data cache`"
            )
        if len(usable) < len(records):
            logger.warning(
                "%d record(s) left out: their images could not be decoded", len(records) - len(usable)
            )
        unknown = sorted({r.label for r in usable} - set(class_to_idx))
        if unknown:
            raise CxrtlError(f"labels {unknown} are not among the classes {list(class_to_idx)}")
        self.cache = cache
        self.records = usable
        self.class_to_idx = dict(class_to_idx)
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)
        self.rows = np.asarray([cache.row_of[r.path] for r in usable], dtype=np.int64)
        self.labels = np.asarray([class_to_idx[r.label] for r in usable], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = torch.from_numpy(np.array(self.cache.images[row], copy=True)).unsqueeze(0)
        return image, int(self.labels[i])

    def __getitems__(self, indices):
        """Batched fetch for DataLoader: one sorted gather from the memmap instead of B small reads."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = self.rows[idx]
        order = np.argsort(rows, kind="stable")
        batch = np.empty((len(idx), 1) + self.cache.images.shape[1:], dtype=np.uint8)
        batch[order, 0] = self.cache.images[rows[order]]
        images = torch.from_numpy(batch)
        return [(images[j], int(self.labels[k])) for j, k in enumerate(idx)]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 ``[B, 1, S, S]``, int64 ``[B]``) for ``indices``, without a DataLoader."""
        items = self.__getitems__(indices)
        return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items], dtype=torch.int64)


@dataclass
class PreparedData:
    """What training and evaluation need: the index, class order, the split and one dataset per split."""

    index: DatasetIndex
    classes: list[str]
    split: dict[str, list[Record]]
    datasets: dict[str, CachedDataset]
    cache: ImageCache | None = None

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


def prepare_data(
    root: str | os.PathLike,
    pp: Preprocess,
    split_csv=None,
    seed: int = 2022,
    ratios=None,
    group_by: str | None = None,
    official: bool = False,
    cache_dir=None,
    progress: bool = True,
    index: DatasetIndex | None = None,
) -> PreparedData:
    """Index ``root``, split it (or read ``split_csv``), build/reuse the cache, and wrap each split.

    ``index``: an already loaded :func:`load_dataset` of ``root``, so a caller can check it before the
    cache is built (minutes on the full datasets) without indexing twice.
    """
    index = index if index is not None else load_dataset(root)
    if pp.input == "masked" and not split_csv:  # a split CSV may bring masks (``data split --masks``)
        check_masks(index)
    split = (
        read_split_csv(split_csv, index)
        if split_csv
        else make_split(index, ratios=ratios, seed=seed, group_by=group_by, official=official)
    )
    records = [r for name in SPLITS for r in split[name]]
    if pp.input == "masked":
        check_masks(index, records)
    cache = build_cache(index, records, pp, cache_dir=cache_dir, progress=progress)
    if cache.failed:
        index.skipped.extend(Skipped(p, f"cannot decode: {why}") for p, why in sorted(cache.failed.items()))
        split = {name: [r for r in recs if r.path not in cache.failed] for name, recs in split.items()}
    class_to_idx = {c: i for i, c in enumerate(index.classes)}
    datasets = {name: CachedDataset(cache, split[name], class_to_idx) for name in SPLITS}
    return PreparedData(index=index, classes=list(index.classes), split=split, datasets=datasets, cache=cache)
