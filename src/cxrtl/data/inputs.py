"""The inputs of a prediction: files and folders expanded into image files, and each image's lung mask."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import CxrtlError
from .image_io import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


def collect_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively) into their image files, sorted; explicit files are kept as given.

    A folder contributes only files with an image/DICOM suffix; a file named explicitly is always tried,
    so a wrong file gives an error row rather than vanishing. A path that does not exist is a usage
    error (a typo), raised before any work.
    """
    inputs = [Path(p).expanduser() for p in paths]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise CxrtlError(
            f"{'input does' if len(missing) == 1 else 'inputs do'} not exist: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; check the path"
        )
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(x.startswith(".") for x in f.relative_to(p).parts)
            )
            found = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
            skipped = [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
            if skipped:
                log.warning(
                    "skipped %d file(s) under %s that are not PNG/JPEG/DICOM by name (e.g. %s); give a file "
                    "explicitly to try it anyway",
                    len(skipped),
                    p,
                    skipped[0].relative_to(p),
                )
            if not found:
                log.warning("no PNG/JPEG/DICOM images under %s", p)
            out.extend(found)
        else:
            out.append(p)
    return out


def find_masks(
    images: Sequence[Path], mask: str | os.PathLike | None = None, mask_dir: str | os.PathLike | None = None
) -> list[Path | None]:
    """The lung mask of each image: one --mask for a single image, or the same file name in --mask-dir.

    In --mask-dir a mask is matched by file name, then by stem with any image suffix (the COVID-19
    Radiography Database stores masks under the image's own name).
    """
    if mask is not None and mask_dir is not None:
        raise CxrtlError("give either --mask or --mask-dir, not both")
    if mask is not None:
        if len(images) != 1:
            raise CxrtlError(
                f"--mask is for one image, but {len(images)} were given; use --mask-dir DIR "
                "with masks named like their images"
            )
        return [Path(mask)]
    if mask_dir is None:
        return [None] * len(images)
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise CxrtlError(f"mask directory {mask_dir} does not exist")
    by_stem: dict[str, Path] = {}
    for f in sorted(mask_dir.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(f.stem, f)
    out: list[Path | None] = []
    for img in images:
        exact = mask_dir / img.name
        out.append(exact if exact.is_file() else by_stem.get(img.stem))
    return out
