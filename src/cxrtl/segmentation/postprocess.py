"""Make a predicted mask look like lungs: keep the two largest connected components and fill their holes."""

from __future__ import annotations

import numpy as np


def clean_mask(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """Binary ``mask`` -> uint8 0/255 with only the ``keep`` largest 8-connected components, holes filled.

    Speckles outside the chest (markers, text) and gaps inside a lung (dense consolidation) are the usual
    failures of a small U-Net; the two lungs are the two largest components of a good mask.
    """
    from scipy import ndimage

    m = np.asarray(mask) > 0
    labels, n = ndimage.label(m, structure=np.ones((3, 3), bool))
    if n > keep:
        sizes = ndimage.sum_labels(m, labels, index=np.arange(1, n + 1))
        kept = np.argsort(sizes, kind="stable")[::-1][:keep] + 1
        m = np.isin(labels, kept)
    m = ndimage.binary_fill_holes(m)
    return (m.astype(np.uint8)) * 255
