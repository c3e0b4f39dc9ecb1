"""The out-of-distribution guard's part of a model's decision record (:mod:`cxrtl.decisions`), numpy only.

Fitting and measuring it is :mod:`cxrtl.evaluation.ood`; an ONNX export computes :meth:`OutOfDistribution.score`
in its graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CxrtlError

OOD_LAYERS = ("hidden", "pooled")  # the features an OOD guard may be fitted on


@dataclass(frozen=True)
class OutOfDistribution:
    """The out-of-distribution guard: a Mahalanobis score on the model's features (Lee et al. 2018).

    Class-conditional Gaussians with one shared covariance, fitted on the training split's ``layer``
    features (``"hidden"``: the head's 64-d layer after Mish; ``"pooled"``: the backbone's pooled features).
    Stored whitened: ``z = whiten @ f`` and ``means`` are the whitened class means, so the score of a feature
    vector ``f`` is ``min_c ||z - means[c]||^2`` (the smallest squared Mahalanobis distance to a class).
    A row is flagged when its score exceeds ``threshold``, the ``percentile``-th percentile of the validation
    scores: about ``100 - percentile`` % of in-distribution images are flagged by design.
    """

    layer: str
    whiten: list[list[float]]  # [d, d]
    means: list[list[float]]  # [k, d], whitened
    threshold: float
    percentile: float = 99.0
    shrinkage: float | None = None
    fitted_on: str = "train"
    n: int | None = None
    threshold_on: str = "val"
    n_threshold: int | None = None
    fitted_utc: str | None = None

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores ``[N]`` (float64) of features ``[N, d]`` of this guard's layer."""
        f = np.asarray(features, dtype=np.float64)
        z = f @ np.asarray(self.whiten, dtype=np.float64).T
        means = np.asarray(self.means, dtype=np.float64)
        d2 = ((z[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
        return d2.min(axis=1)

    def flag(self, score: float) -> dict[str, Any]:
        """``{"score", "threshold", "flag"}`` of one image: flag True when it is unlike the training images."""
        return {
            "score": float(score),
            "threshold": float(self.threshold),
            "flag": bool(score > self.threshold),
        }

    def check(self, n_classes: int, where: str) -> None:
        """A one-line error naming ``where`` unless the guard's shapes and numbers are sound."""
        w, m = np.asarray(self.whiten, dtype=np.float64), np.asarray(self.means, dtype=np.float64)
        finite = bool(np.isfinite(w).all() and np.isfinite(m).all())
        threshold = (
            isinstance(self.threshold, (int, float)) and np.isfinite(self.threshold) and self.threshold >= 0
        )
        if (
            self.layer not in OOD_LAYERS
            or w.ndim != 2
            or w.shape[0] != w.shape[1]
            or m.shape != (n_classes, w.shape[0])
            or not finite
            or not threshold
        ):
            raise CxrtlError(
                f"{where} has a damaged out-of-distribution guard; refit it with cxrtl evaluate RUN --fit-ood"
            )
