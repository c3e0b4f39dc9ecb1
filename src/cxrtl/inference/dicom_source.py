"""The DICOM side of a prediction's inputs: source headers trimmed to what results may copy, kept masks.

:func:`read_source` reads a DICOM input's header and checks it has the UIDs its results need to join its
study; :func:`minimal_source` keeps only the patient and study attributes the result IODs require and the
attributes describing the source image, since highdicom copies whole modules from the dataset it is given.
:class:`MaskKeeper` keeps the masks a segmenter predicted until their SEG is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrtlError


def read_source(path: str | os.PathLike):
    """The header of a DICOM input (no pixel data), checked for the UIDs its results need to join it.

    Raises:
        CxrtlError: it has no Study, Series or SOP Instance UID (such a file came from outside a PACS).
    """
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not ds.get(k)]
    if missing:
        raise CxrtlError(
            f"{path}: no {' or '.join(missing)} in the DICOM header, so its results cannot join its study; "
            "give the DICOM as the PACS stored it, or leave out --dicom-out"
        )
    return minimal_source(ds)


# What a result object may take from its source: the patient and study attributes the IODs require (Patient
# and General Study modules, types 1 and 2), the source's identity, and the image attributes that describe
# its pixel grid. highdicom copies whole modules from the dataset it is given, so it is given only these.
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
SOURCE_IMAGE = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "PatientOrientation",
    "ViewPosition",
    "BodyPartExamined",
    "Laterality",
    "ImageLaterality",
)


def minimal_source(ds):
    """A copy of a source header holding only :data:`PATIENT_STUDY` and :data:`SOURCE_IMAGE` attributes."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for keyword in PATIENT_STUDY + SOURCE_IMAGE:
        if keyword in ds:
            out[keyword] = ds[keyword]
    for keyword in PATIENT_STUDY[:4] + PATIENT_STUDY[5:]:  # type 2: present, empty when unknown
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def orientation(source) -> Any:
    value = source.get("PatientOrientation")
    return value if value is not None else ""


def reference(source):
    """A Referenced Series Sequence item pointing at the source image (Series and SOP Instance UIDs)."""
    from pydicom.dataset import Dataset

    inst = Dataset()
    inst.ReferencedSOPClassUID = source.SOPClassUID
    inst.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedInstanceSequence = [inst]
    return series


def check_out_dir(path: Path) -> None:
    """``--dicom-out DIR`` must be a folder (created if missing), never an existing file."""
    from ..fsutil import ensure_dir

    if path.exists() and not path.is_dir():
        raise CxrtlError(f"--dicom-out {path} is a file; give a folder for the DICOM results")
    ensure_dir(path)


# ------------------------------------------------------------------------------------------ masks
class MaskKeeper:
    """Keeps each lung mask a segmenter predicts (on disk, bit-packed) until its SEG is written.

    Install as ``predictor.mask_hook``; :meth:`get` returns the 0/255 mask of a path, or None.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="cxrtl-masks-")
        self._files: dict[str, tuple[Path, tuple[int, int]]] = {}

    def __call__(self, path: str, mask: np.ndarray) -> None:
        f = Path(self._dir.name) / f"{len(self._files)}.npy"
        np.save(f, np.packbits(np.asarray(mask) > 127))
        self._files[str(path)] = (f, (int(mask.shape[0]), int(mask.shape[1])))

    def get(self, path: str) -> np.ndarray | None:
        if str(path) not in self._files:
            return None
        f, (h, w) = self._files[str(path)]
        bits = np.unpackbits(np.load(f), count=h * w)
        return bits.reshape(h, w).astype(np.uint8) * 255

    def close(self) -> None:
        self._dir.cleanup()


def is_dicom_input(path: str | os.PathLike) -> bool:
    from ..data.dicom import is_dicom

    return is_dicom(path)


def non_dicom_note(paths: Iterable[str]) -> str | None:
    """The one-line note for inputs that get no DICOM output (PNG, JPEG, ...), or None."""
    paths = list(paths)
    if not paths:
        return None
    shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
    return (
        f"{len(paths)} input(s) are not DICOM and get no DICOM output ({shown}); "
        "results join a study only for DICOM inputs"
    )
