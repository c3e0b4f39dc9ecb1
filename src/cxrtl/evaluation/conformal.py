"""Split-conformal prediction sets: a set of classes that holds the true one with probability 1 - alpha.

Method: LAC (least ambiguous set-valued classifier; Sadinle, Lei and Wasserman 2019). The score of an
image is ``1 - p(true class)`` on the validation subset; the threshold is the
``ceil((n + 1)(1 - alpha))``-th smallest of those n scores, and the set of a new image is every
class with ``p >= 1 - threshold``. Among split-conformal methods with marginal coverage LAC gives the
smallest sets on average and is deterministic (APS needs randomisation for exact coverage and gives
larger sets); its coverage can differ between classes, which is why ``per_class_coverage`` is reported.

The guarantee is *marginal*: at least 1 - alpha over test images, not for each true class (with class
prevalences of 60/30/10% the rarest class can be covered far less often). Class-conditional (Mondrian)
conformal, :func:`fit_class_thresholds` (``evaluate --conformal-by-class``), fits one threshold per class
on that class's calibration images alone, so each class gets its own 1 - alpha; it needs enough
calibration images of every class.

An empty set is a real answer: no class is plausible at this coverage. It is a reason to look at the image,
not a prediction; ``predict`` writes :data:`cxrtl.decisions.EMPTY_SET` for it in CSV and table output.
It is a few lines of numpy, so no library (MAPIE) is needed; the ONNX prediction path, which must not
import torch, can use it too.

The fitted threshold is kept in the model's decision record (:mod:`cxrtl.decisions`), which applies it to
new images; it was fitted on probabilities at the temperature it records, and prediction uses it only at
that temperature.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import CxrtlError

METHOD = "lac"
METHOD_BY_CLASS = "lac-mondrian"  # one LAC threshold per true class (class-conditional)
MARGINAL_NOTE = (
    "the guarantee is marginal: at least 1 - alpha of all test images, not of each class; "
    "a class's own coverage can be lower (use --conformal-by-class for per-class coverage)"
)
BY_CLASS_NOTE = "class-conditional (Mondrian): each class has its own threshold and its own 1 - alpha"
MIN_CALIBRATION = 20  # below this the threshold's own sampling error swamps the guarantee


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in (0, 1), or a one-line error."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise CxrtlError(f"--conformal must be in (0, 1), not {alpha}; e.g. 0.1 for 90% coverage")
    return float(alpha)


def needed_calibration(alpha: float) -> int:
    """Validation images needed: at least 20, and enough that the quantile is finite (n >= 1/alpha - 1)."""
    return max(MIN_CALIBRATION, math.ceil(1 / alpha - 1))


def fit_threshold(probs: np.ndarray, labels: np.ndarray, alpha: float) -> float:
    """The LAC threshold on ``1 - p(true class)`` from calibration probabilities [n, k] and labels [n]."""
    alpha = check_alpha(alpha)
    n, need = len(labels), needed_calibration(alpha)
    if n < need:
        raise CxrtlError(
            f"conformal sets at alpha {alpha:g} need at least {need} validation images, the split has {n}; "
            "use a larger validation split or a larger alpha"
        )
    scores = 1.0 - np.asarray(probs, dtype=np.float64)[np.arange(n), np.asarray(labels)]
    rank = math.ceil((n + 1) * (1 - alpha))  # <= n, since n >= 1/alpha - 1
    return float(np.sort(scores)[rank - 1])


def check_class_counts(counts: dict[str, int], alpha: float, subset: str = "validation") -> None:
    """Refuse class-conditional sets when a class has fewer calibration images than alpha needs."""
    need = needed_calibration(check_alpha(alpha))
    short = {c: k for c, k in counts.items() if k < need}
    if short:
        have = ", ".join(f"{c} has {k}" for c, k in short.items())
        raise CxrtlError(
            f"--conformal-by-class {alpha:g} needs at least {need} {subset} images of every class; {have}; "
            "use a larger split, a larger alpha, or --conformal without --conformal-by-class"
        )


def fit_class_thresholds(probs: np.ndarray, labels: np.ndarray, alpha: float, classes: list[str]) -> dict:
    """Class-conditional (Mondrian) LAC: each class's threshold from its own calibration images only."""
    labels = np.asarray(labels)
    check_class_counts({c: int(np.sum(labels == i)) for i, c in enumerate(classes)}, alpha)
    probs = np.asarray(probs, dtype=np.float64)
    return {c: fit_threshold(probs[labels == i], labels[labels == i], alpha) for i, c in enumerate(classes)}


def prediction_sets(probs: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Boolean membership [N, k]: class j is in image i's set when ``1 - p_ij <= threshold`` (of class j)."""
    return (1.0 - np.asarray(probs, dtype=np.float64)) <= np.asarray(threshold, dtype=np.float64) + 1e-12


def set_report(
    probs: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray, classes: list[str]
) -> dict:
    """Coverage, mean set size, per-class coverage (with each class's n), singleton and empty fractions."""
    member = prediction_sets(probs, threshold)
    labels = np.asarray(labels)
    covered = member[np.arange(len(labels)), labels]
    sizes = member.sum(axis=1)
    per_class = {
        c: (float(covered[labels == i].mean()) if np.any(labels == i) else None)
        for i, c in enumerate(classes)
    }
    return {
        "coverage": float(covered.mean()),
        "mean_set_size": float(sizes.mean()),
        "per_class_coverage": per_class,
        "per_class_n": {c: int(np.sum(labels == i)) for i, c in enumerate(classes)},
        "singleton_fraction": float(np.mean(sizes == 1)),
        "empty_fraction": float(np.mean(sizes == 0)),
        "n": int(len(labels)),
    }
