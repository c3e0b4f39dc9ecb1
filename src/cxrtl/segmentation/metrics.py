"""Dice and IoU of binary masks, per image, and a bootstrap 95% interval of their mean (numpy only)."""

from __future__ import annotations

import numpy as np


def dice_iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two masks (non-zero = lung). Both empty counts as a perfect match (1, 1)."""
    p = np.asarray(pred) > 0
    t = np.asarray(true) > 0
    inter = float(np.logical_and(p, t).sum())
    total = float(p.sum() + t.sum())
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return 2.0 * inter / total, inter / union


def mean_interval(values, seed: int = 0, n_resamples: int = 2000) -> dict:
    """{"mean", "ci_low", "ci_high"}: mean over images with a percentile-bootstrap 95% interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(v.mean()), "ci_low": float(lo), "ci_high": float(hi)}
