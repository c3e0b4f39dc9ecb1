"""Records: what a dataset on disk is, once its layout has been read. No image is opened here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# In order: a duplicate is kept in the earliest split, reported first. "calibration" is optional (empty unless
# `cxrtl data split` made one): the images evaluate fits the temperature, operating point and conformal sets on,
# apart from the validation images that chose the checkpoint.
SPLITS = ("train", "val", "calibration", "test")
KERMANY_FOLDERS = ("train", "val", "test")  # the official Kermany split's folders


def split_rank(name: str | None) -> int:
    """Where a split sorts (train < val < calibration < test); no split, or an unknown one, sorts after them."""
    return SPLITS.index(name) if name in SPLITS else len(SPLITS)


@dataclass(frozen=True)
class Record:
    """One usable image.

    ``path`` and ``mask_path`` are relative to :attr:`DatasetIndex.root` (the dataset folder itself),
    so a split CSV stays valid when the dataset moves. ``source_split`` keeps Kermany's official folder.
    """

    path: str
    label: str
    mask_path: str | None = None
    patient_id: str | None = None
    source_split: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why (``"not an image"``, ``"truncated"``, ``"duplicate of X"`` ...)."""

    path: str
    reason: str


@dataclass
class DatasetIndex:
    """A dataset root resolved to its layout, classes (sorted) and records."""

    root: Path
    layout: str  # "covid-radiography" | "kermany" | "class-folders" | "csv"
    classes: list[str]
    records: list[Record]
    skipped: list[Skipped] = field(default_factory=list)
    missing_masks: list[str] = field(default_factory=list)

    def abspath(self, rel: str) -> Path:
        """Absolute path of a record's (or mask's) relative path."""
        return self.root / rel

    @property
    def kind(self) -> str:
        """``covid`` or ``pneumonia``, for picking split defaults; ``generic`` otherwise."""
        return {"covid-radiography": "covid", "kermany": "pneumonia"}.get(self.layout, "generic")
