"""Fitting a model's decision settings on the validation subset: temperature, operating point, conformal sets.

:func:`cxrtl.evaluation.evaluate.evaluate` scores a subset, then calls these. Each fit returns the updated
decision record (:mod:`cxrtl.decisions`); :func:`store` writes it once, at the end, atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import CxrtlError
from . import metrics as M

log = logging.getLogger(__name__)


def ce_from_logits(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    from scipy.special import logsumexp

    z = logits / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def check_positive(positive: str, classes: list[str], target_sensitivity: float) -> None:
    M.resolve_class(positive, classes)
    if not 0 < target_sensitivity <= 1:
        raise CxrtlError(f"target sensitivity must be in (0, 1], not {target_sensitivity}; e.g. 0.95")


def validation_scores(scored: tuple, predict, data, subset: str) -> tuple:
    """(logits, labels) of the validation subset: reused when it is the subset scored, else predicted."""
    val = scored if subset == "val" else predict(list(data.split["val"]))[:2]
    if len(val[1]) == 0:
        raise CxrtlError(
            "calibration and --positive need a non-empty validation subset; "
            "use a split with validation images"
        )
    return val


def fit_temperature(record, val: tuple | None, calibrate: bool, subset: str):
    """The record with a temperature fitted on validation (``calibrate``), or as it was."""
    from ..decisions import Temperature, now_utc

    if not calibrate:
        return record
    assert val is not None  # the caller passes validation scores whenever it calibrates
    temperature = M.fit_temperature(*val)
    log.info("fitted temperature %.4f on %d validation images", temperature, len(val[1]))
    if subset == "val":
        log.warning("the temperature was fitted on the subset it is evaluated on")
    return record.replace(
        temperature=Temperature(
            value=float(temperature),
            fitted_on="val",
            n=len(val[1]),
            fitted_utc=now_utc(),
            nll_before=ce_from_logits(*val),
            nll_after=ce_from_logits(val[0], val[1], temperature),
        )
    )


def check_conformal(alpha: float | None, data) -> None:
    """Refuse a bad alpha, or too few validation images for it, before any prediction."""
    if alpha is None:
        return
    from .conformal import check_alpha, needed_calibration

    alpha = check_alpha(alpha)
    n, need = len(data.split["val"]), needed_calibration(alpha)
    if n < need:
        raise CxrtlError(
            f"--conformal {alpha:g} needs at least {need} validation images, the split has {n}; "
            "use a split with a larger validation subset, or a larger alpha"
        )


def fit_conformal(result: dict, record, val: tuple, logits, labels, alpha: float):
    """Fit LAC sets on validation at the prediction temperature and score them -> the updated record."""
    from ..decisions import Conformal, now_utc
    from .conformal import METHOD, fit_threshold, set_report

    t = record.t
    threshold = fit_threshold(M.softmax(val[0], t), val[1], alpha)
    fitted = Conformal(
        alpha=alpha,
        threshold=threshold,
        method=METHOD,
        temperature=t,
        fitted_on="val",
        n=len(val[1]),
        fitted_utc=now_utc(),
    )
    log.info(
        "fitted conformal threshold %.4f (alpha %g) on %d validation images", threshold, alpha, len(val[1])
    )
    scored = set_report(M.softmax(logits, t), labels, threshold, result["classes"])
    result["conformal"] = {
        "alpha": alpha,
        "method": METHOD,
        "threshold": threshold,
        "temperature": t,
        "fitted_on": "val",
        "n_calibration": len(val[1]),
        **scored,
    }
    if result["source"]["subset"] == "val":
        log.warning("the conformal threshold was fitted on the subset it is evaluated on")
    return record.replace(conformal=fitted)


def fit_operating_point(record, result: dict):
    """The record with ``evaluate --positive``'s threshold, which ``predict`` then uses to flag rows."""
    from ..decisions import OperatingPoint, now_utc

    op = result.get("operating_point")
    if not op:
        return record
    return record.replace(
        operating_point=OperatingPoint(
            positive=op["positive"],
            threshold=float(op["threshold"]),
            temperature=float(op.get("temperature", 1.0)),
            method="lowest threshold reaching the target sensitivity on validation",
            target_sensitivity=op["target_sensitivity"],
            fitted_on="val",
            n=op["val"]["tp"] + op["val"]["fn"] + op["val"]["tn"] + op["val"]["fp"],
            n_positive=op["val"]["tp"] + op["val"]["fn"],
            fitted_utc=now_utc(),
            warning=op.get("warning"),
        )
    )


def store(ckpt: Path, before, after, migrate: bool) -> None:
    """Write the decision record when evaluation changed it (or, with ``migrate``, when it has old sidecars)."""
    from ..decisions import record_files, write_decisions

    legacy = any(not p.name.endswith(".decisions.json") for p in record_files(ckpt))
    if after != before or (migrate and legacy):
        path = write_decisions(ckpt, after)
        log.info("saved the model's decision settings to %s", path)
