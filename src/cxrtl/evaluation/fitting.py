"""Fitting a model's decision settings: temperature, operating point, conformal sets.

They are fitted on the split's calibration subset when it has one (``cxrtl data split --ratios
0.7,0.1,0.05,0.15`` or ``--calibration-fraction F``), else on the validation subset, which also chose the
checkpoint: reusing it makes its scores slightly optimistic, so test coverage and sensitivity can fall a
little below target. Each part of the record says which (``fitted_on``).

:func:`cxrtl.evaluation.evaluate.evaluate` scores a subset, then calls these. Each fit returns the updated
decision record (:mod:`cxrtl.decisions`); :func:`store` writes it once, at the end, atomically.
"""

from __future__ import annotations

import logging
import math
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


SUBSET_WORDS = {"val": "validation", "calibration": "calibration"}
REUSED_VALIDATION = (
    "fitted on the validation subset, which also chose the checkpoint, so their validation scores are "
    "slightly optimistic (test coverage and sensitivity can fall a little below target); a split with a "
    "calibration subset (cxrtl data split --ratios 0.7,0.1,0.05,0.15) avoids this"
)


def fit_subset(data) -> str:
    """The subset decision settings are fitted on: ``calibration`` when the split has one, else ``val``."""
    return "calibration" if data.split.get("calibration") else "val"


def fitting_scores(scored: tuple, predict, data, subset: str) -> tuple:
    """(logits, labels) of the fitting subset: reused when it is the subset scored, else predicted."""
    fit_on = fit_subset(data)
    val = scored if subset == fit_on else predict(list(data.split[fit_on]))[:2]
    if len(val[1]) == 0:
        raise CxrtlError(
            f"calibration, --positive and --conformal need a non-empty {SUBSET_WORDS[fit_on]} subset; "
            "use a split with images there"
        )
    return val


def warn_if_scored_on(part: str, fit_on: str, subset: str) -> None:
    """Warn when ``part`` is evaluated on the very subset it was fitted on (its scores are optimistic)."""
    if subset == fit_on:
        log.warning("the %s was fitted on the subset it is evaluated on (%s)", part, SUBSET_WORDS[fit_on])


def fit_temperature(record, val: tuple | None, calibrate: bool, subset: str, fit_on: str = "val"):
    """The record with a temperature fitted on ``fit_on`` (``calibrate``), or as it was."""
    from ..decisions import Temperature, now_utc

    if not calibrate:
        return record
    assert val is not None  # the caller passes fitting scores whenever it calibrates
    temperature = M.fit_temperature(*val)
    log.info("fitted temperature %.4f on %d %s images", temperature, len(val[1]), SUBSET_WORDS[fit_on])
    warn_if_scored_on("temperature", fit_on, subset)
    return record.replace(
        temperature=Temperature(
            value=float(temperature),
            fitted_on=fit_on,
            n=len(val[1]),
            fitted_utc=now_utc(),
            nll_before=ce_from_logits(*val),
            nll_after=ce_from_logits(val[0], val[1], temperature),
        )
    )


def conformal_refusal(alpha: float | None, data, by_class: bool, others: bool) -> CxrtlError | None:
    """:func:`check_conformal`'s refusal, returned instead of raised when ``others`` (other fits were asked
    for: they are done first, and the refusal raised after them)."""
    try:
        check_conformal(alpha, data, by_class)
    except CxrtlError as exc:
        if not others:
            raise
        return exc
    return None


def check_conformal(alpha: float | None, data, by_class: bool = False) -> None:
    """Refuse a bad alpha, or too few fitting images for it (of each class, ``by_class``), before any prediction."""
    if alpha is None:
        if by_class:
            raise CxrtlError(
                "--conformal-by-class needs --conformal ALPHA; e.g. --conformal 0.1 --conformal-by-class"
            )
        return
    from .conformal import MIN_CALIBRATION, check_alpha, check_class_counts, needed_calibration

    alpha = check_alpha(alpha)
    fit_on = fit_subset(data)
    words = SUBSET_WORDS[fit_on]
    n, need = len(data.split[fit_on]), needed_calibration(alpha)
    if n < need:
        total = sum(len(v) for v in data.split.values())
        share = min(0.5, math.ceil(20 * need / max(total, 1)) / 20)  # the share, rounded up to 0.05
        ratios = f"{1 - share - 0.15:.2f},{share:.2f},0.15"
        fix = (
            f"train on a split with at least {need} {words} images, e.g. `cxrtl data split ROOT --ratios {ratios} "
            "--out SPLIT.csv`, then `cxrtl train --split SPLIT.csv`"
        )
        if need > MIN_CALIBRATION:  # only then does a larger alpha lower the need
            fix += f", or a larger alpha (at least {MIN_CALIBRATION} images are always needed)"
        raise CxrtlError(
            f"--conformal {alpha:g} needs at least {need} {words} images, the split has {n}; {fix}"
        )
    if by_class:
        counts = {c: 0 for c in data.classes}
        for r in data.split[fit_on]:
            counts[r.label] = counts.get(r.label, 0) + 1
        check_class_counts(counts, alpha, words)


def fit_conformal(
    result: dict,
    record,
    val: tuple,
    logits,
    labels,
    alpha: float,
    by_class: bool = False,
    fit_on: str = "val",
):
    """Fit LAC sets on ``fit_on`` at the prediction temperature and score them -> the updated record.

    ``by_class``: class-conditional (Mondrian) sets, one threshold per class from its own images; the
    marginal threshold is stored beside them as ``threshold``.
    """
    from ..decisions import Conformal, now_utc
    from .conformal import (
        BY_CLASS_NOTE,
        MARGINAL_NOTE,
        METHOD,
        METHOD_BY_CLASS,
        fit_class_thresholds,
        fit_threshold,
        set_report,
    )

    t, classes = record.t, result["classes"]
    val_probs = M.softmax(val[0], t)
    threshold = fit_threshold(val_probs, val[1], alpha)
    per_class = fit_class_thresholds(val_probs, val[1], alpha, classes) if by_class else None
    method = METHOD_BY_CLASS if by_class else METHOD
    fitted = Conformal(
        alpha=alpha,
        threshold=threshold,
        method=method,
        temperature=t,
        fitted_on=fit_on,
        n=len(val[1]),
        class_thresholds=per_class,
        fitted_utc=now_utc(),
    )
    log.info(
        "fitted conformal threshold%s (alpha %g) on %d %s images",
        "s " + ", ".join(f"{c} {v:.4f}" for c, v in per_class.items()) if per_class else f" {threshold:.4f}",
        alpha,
        len(val[1]),
        SUBSET_WORDS[fit_on],
    )
    limits = np.array([per_class[c] for c in classes]) if per_class else threshold
    scored = set_report(M.softmax(logits, t), labels, limits, classes)
    result["conformal"] = {
        "alpha": alpha,
        "method": method,
        "threshold": threshold,
        "class_thresholds": per_class,
        "guarantee": BY_CLASS_NOTE if by_class else MARGINAL_NOTE,
        "temperature": t,
        "fitted_on": fit_on,
        "n_calibration": len(val[1]),
        **scored,
    }
    warn_if_scored_on("conformal threshold", fit_on, result["source"]["subset"])
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
            method="lowest threshold reaching the target sensitivity on the "
            f"{SUBSET_WORDS[op.get('fitted_on', 'val')]} subset",
            target_sensitivity=op["target_sensitivity"],
            fitted_on=op.get("fitted_on", "val"),
            n=op["val"]["tp"] + op["val"]["fn"] + op["val"]["tn"] + op["val"]["fp"],
            n_positive=op["val"]["tp"] + op["val"]["fn"],
            fitted_utc=now_utc(),
            warning=op.get("warning"),
        )
    )


def fitted_on(result: dict, record) -> dict[str, str]:
    """Which subset each decision setting an evaluation reports was fitted on (``calibration`` or ``val``)."""
    parts = {}
    if result.get("calibrated") and record.temperature is not None:
        parts["temperature"] = record.temperature.fitted_on
    for key in ("operating_point", "conformal"):
        if result.get(key):
            parts[key] = result[key]["fitted_on"]
    return parts


def read_only_bundle(folder: Path) -> str:
    return (
        f"{folder} is a bundle, whose files are checksummed: its decision settings cannot be refitted in place; "
        "fit them on the run it was made from (`cxrtl evaluate RUN --calibrate ...`) and export the bundle again"
    )


def store(ckpt: Path, before, after, migrate: bool) -> None:
    """Write the decision record when evaluation changed it (or, with ``migrate``, when it has old sidecars)."""
    from ..bundle_manifest import is_bundle
    from ..decisions import record_files, write_decisions

    if is_bundle(ckpt.parent):  # checksummed files: never rewritten in place (nor migrated)
        if after != before:
            raise CxrtlError(read_only_bundle(ckpt.parent))
        return
    legacy = any(not p.name.endswith(".decisions.json") for p in record_files(ckpt))
    if after != before or (migrate and legacy):
        path = write_decisions(ckpt, after)
        log.info("saved the model's decision settings to %s", path)
