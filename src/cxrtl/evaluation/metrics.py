"""Classification metrics computed from predictions (paper §III-F), with 95% intervals and calibration.

Everything here is a pure function of ``y_true`` (int class indices) and ``probs`` (softmax outputs), so
anyone can recompute a ``metrics.json`` from ``predictions.csv``. Point estimates come from
scikit-learn; accuracy is counted over all samples (the paper averaged per-batch accuracies), and the
confusion matrix has true classes as rows and predicted classes as columns (the paper's figure is
transposed).

Interval methods: Wilson score intervals for proportions (accuracy, per-class precision and recall,
sensitivity, specificity); a seeded percentile bootstrap over images for F1, the weighted and macro
averages, and ROC AUC, where no closed form applies. A resample that lacks a class has no AUC (or F1) for
it and is dropped; ``metrics.json["bootstrap"]`` records how many resamples each interval used and dropped.
A class with fewer than :data:`MIN_CASES` positive (or negative) images gets ``ci_unreliable: true`` and a
``ci_note``: intervals from so few cases (a 3-image class reads AUC [1.000, 1.000]) say little.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import cast

import numpy as np

from ..errors import CxrtlError
from ..results import Metrics

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
N_BOOT = 1000
N_BINS = 15
FEW_POSITIVES = 20  # below this many validation positives a sensitivity-targeted threshold is unreliable
MIN_CASES = 10  # an interval from fewer positives (or negatives) of a class than this is flagged unreliable
_BOOT_CHUNK = 100


# --------------------------------------------------------------------------------------------- intervals
def wilson_interval(successes: int, total: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """Wilson score interval for a binomial proportion; None when ``total`` is 0 (undefined)."""
    if total <= 0:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def mean_interval(values, confidence: float = CONFIDENCE, bounds=(0.0, 1.0)) -> list[float] | None:
    """Student-t interval of the mean of ``values`` (clipped to ``bounds``); None for fewer than 2 values.

    For a mean of per-image shares, e.g. the Grad-CAM lung share: images are the independent units.
    """
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    half = t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return [max(bounds[0], float(x.mean() - half)), min(bounds[1], float(x.mean() + half))]


def _percentile_ci(samples: np.ndarray, confidence: float) -> list[float] | None:
    """Percentile interval of bootstrap samples (NaNs, i.e. undefined resamples, ignored)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


# ---------------------------------------------------------------------------------------------- helpers
def _check_inputs(y_true, probs, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate shapes and label range; returns int64 labels, float64 probs and the class list."""
    classes = [str(c) for c in classes]
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"probs must have shape [N, {len(classes)}], got {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} probability rows")
    if y.size == 0:
        raise CxrtlError("no samples to evaluate; choose a non-empty subset")
    if len(classes) < 2:
        raise ValueError("at least two classes are needed")
    bad = (y < 0) | (y >= len(classes))
    if bad.any():
        raise CxrtlError(
            f"{int(bad.sum())} labels outside the {len(classes)} known classes "
            f"(e.g. {int(y[bad][0])}); evaluate with the checkpoint's classes"
        )
    return y, p, classes


def cross_entropy(y_true, probs, eps: float = 1e-12) -> float:
    """Mean unweighted cross entropy -log p[y] over all samples (probabilities clipped at ``eps``)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of ``logits / temperature`` (float64 in, float64 out)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _prf_from_cm(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision/recall/F1 from confusion matrices ``[..., k, k]`` (zero division -> 0)."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}


def _weighted_auc(is_pos: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties count half) of each row of sample multiplicities ``weights`` [B, N].

    One sort of the scores serves every bootstrap resample; NaN where a resample lacks a class.
    """
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    new_group = np.r_[True, s[1:] != s[:-1]]
    gid = np.cumsum(new_group) - 1
    first = np.flatnonzero(new_group)[gid]
    last = np.r_[np.flatnonzero(new_group)[1:] - 1, len(s) - 1][gid]
    w = weights[:, order].astype(np.float64)
    pos = is_pos[order]
    pw, nw = w * pos, w * ~pos
    cum_n = np.cumsum(nw, axis=1)
    below = cum_n[:, first] - nw[:, first]
    ties = cum_n[:, last] - below
    n_pos, n_neg = pw.sum(axis=1), nw.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pw * (below + 0.5 * ties)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


# --------------------------------------------------------------------------------------------- main API
def roc_auc_averages(y_true, probs, classes: Sequence[str]) -> dict:
    """One-vs-rest ROC AUC per class and its micro, macro and (support-)weighted averages.

    All four come from scikit-learn's ``roc_auc_score`` on the one-hot truth, so the report table, the
    ROC figure legend and ``metrics.json`` show one value for each. A class absent from (or the only
    class of) the subset has no AUC (None); the macro and weighted averages are taken over the classes
    that have one, and the micro average over every class column.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(len(classes), dtype=np.int64)[y]
    has = [i for i in range(len(classes)) if 0 < onehot[:, i].sum() < len(y)]
    per_class = {
        c: (float(roc_auc_score(onehot[:, i], p[:, i])) if i in has else None) for i, c in enumerate(classes)
    }
    out: dict = {"per_class": per_class, "micro": None, "macro": None, "weighted": None}
    if has:
        out["micro"] = float(roc_auc_score(onehot, p, average="micro"))
        for avg in ("macro", "weighted"):
            out[avg] = float(roc_auc_score(onehot[:, has], p[:, has], average=avg))
    return out


def _undefined_to_none(per_class: dict) -> None:
    """Precision of a never-predicted class and recall of an absent one are undefined: None, not 0.

    F1 = 2TP / (support + predicted) stays defined (0) while either count is positive.
    """
    for e in per_class.values():
        if e["predicted"] == 0:
            e["precision"] = None
        if e["support"] == 0:
            e["recall"] = None
        if e["predicted"] == 0 and e["support"] == 0:
            e["f1"] = None


def calibration_bins(y_true, probs, n_bins: int = N_BINS) -> dict:
    """Expected calibration error of the top-class confidence, with the bins of a reliability diagram.

    Bins are equal-width on (0, 1]; a bin holds samples with lo < confidence <= hi (the first also 0).
    ECE = sum over bins of count/N * |accuracy - mean confidence|.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        acc = float(correct[sel].mean()) if count else None
        mean_conf = float(conf[sel].mean()) if count else None
        if acc is not None and mean_conf is not None:  # i.e. count > 0
            ece += count / len(y) * abs(acc - mean_conf)
        bins.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": count,
                "confidence": mean_conf,
                "accuracy": acc,
            }
        )
    return {"ece": float(ece), "n_bins": n_bins, "bins": bins}


def compute_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    loss: float | None = None,
    seed: int = 0,
    n_boot: int = N_BOOT,
    n_bins: int = N_BINS,
    confidence: float = CONFIDENCE,
) -> Metrics:
    """All metrics of one evaluation (the ``metrics.json`` schema), from labels and probabilities.

    Args:
        y_true: class indices into ``classes``, shape [N].
        probs: class probabilities, shape [N, k]; the prediction is their argmax.
        classes: class names, in the model's output order.
        loss: mean unweighted cross entropy if already known (e.g. from logits); else from ``probs``.
        seed, n_boot: the bootstrap's seed and number of resamples (0 disables bootstrap intervals).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y, p, classes = _check_inputs(y_true, probs, classes)
    k, n = len(classes), len(y)
    labels = list(range(k))
    pred = p.argmax(axis=1)

    cm = confusion_matrix(y, pred, labels=labels)
    correct = int(np.trace(cm))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    averages = {}
    for avg in ("weighted", "macro"):
        ap, ar, af, _ = precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
        averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}

    per_class = {}
    predicted = cm.sum(axis=0)
    for i, c in enumerate(classes):
        per_class[c] = {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "precision_ci": wilson_interval(int(cm[i, i]), int(predicted[i]), confidence),
            "recall_ci": wilson_interval(int(cm[i, i]), int(support[i]), confidence),
            "f1_ci": None,
        }

    roc_auc = roc_auc_averages(y, p, classes)
    _undefined_to_none(per_class)

    result = {
        "classes": classes,
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "accuracy_ci": wilson_interval(correct, n, confidence),
        "loss": float(loss) if loss is not None else cross_entropy(y, p),
        "per_class": per_class,
        "weighted": averages["weighted"],
        "macro": averages["macro"],
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_axes": {"rows": "true", "columns": "predicted", "order": classes},
        "roc_auc": roc_auc["per_class"],
        "roc_auc_ci": {c: None for c in classes},
        "roc_auc_micro": roc_auc["micro"],
        "roc_auc_macro": roc_auc["macro"],
        "roc_auc_weighted": roc_auc["weighted"],
        "brier": float(np.mean(np.sum((p - np.eye(k)[y]) ** 2, axis=1))),
        "calibration": calibration_bins(y, p, n_bins),
        "intervals": {
            "confidence": confidence,
            "proportions": "wilson",
            "f1_averages_auc": f"percentile bootstrap over images, {n_boot} resamples, seed {seed}"
            if n_boot
            else "none",
        },
    }
    result["ece"] = result["calibration"]["ece"]
    _flag_few_cases(result, n)
    if n_boot:
        _bootstrap(result, y, pred, p, k, seed, n_boot, confidence)
    return cast(Metrics, result)


def _flag_few_cases(result: dict, n: int) -> None:
    """Mark each class whose intervals rest on fewer than :data:`MIN_CASES` positive or negative images."""
    for c, e in result["per_class"].items():
        pos, neg = e["support"], n - e["support"]
        few = [f"{k} {kind}" for k, kind in ((pos, "positive"), (neg, "negative")) if k < MIN_CASES]
        e["ci_unreliable"] = bool(few)
        e["ci_note"] = (
            f"only {' and '.join(few)} image(s) of {c} (fewer than {MIN_CASES}): its recall, F1 and AUC "
            "intervals are unreliable"
            if few
            else None
        )


def _bootstrap(
    result: dict,
    y: np.ndarray,
    pred: np.ndarray,
    p: np.ndarray,
    k: int,
    seed: int,
    n_boot: int,
    confidence: float,
) -> None:
    """Fill the bootstrap intervals (F1, weighted/macro averages, AUC) of ``result`` in place."""
    rng = np.random.default_rng(seed)
    n = len(y)
    codes = y * k + pred
    f1s: list[np.ndarray] = []
    aucs: list[np.ndarray] = []
    avgs: dict[str, dict[str, list[np.ndarray]]] = {
        a: {m: [] for m in ("precision", "recall", "f1")} for a in ("weighted", "macro")
    }
    for start in range(0, n_boot, _BOOT_CHUNK):
        b = min(_BOOT_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = (np.arange(b)[:, None] * k * k + codes[idx]).ravel()
        cms = np.bincount(flat, minlength=b * k * k).reshape(b, k, k)
        prf = _prf_from_cm(cms)
        f1_b = np.where(prf["support"] + prf["predicted"] > 0, prf["f1"], np.nan)
        f1s.append(f1_b)
        weights = prf["support"] / n
        for m in ("precision", "recall", "f1"):
            avgs["weighted"][m].append((prf[m] * weights).sum(axis=1))
            avgs["macro"][m].append(prf[m].mean(axis=1))
        mult = np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n)
        aucs.append(np.stack([_weighted_auc(y == i, p[:, i], mult) for i in range(k)], axis=1))
    f1_all, auc_all = np.concatenate(f1s), np.concatenate(aucs)

    def counts(samples: np.ndarray) -> dict[str, int]:
        used = int(np.isfinite(samples).sum())
        return {"used": used, "dropped": int(samples.size - used)}

    result["bootstrap"] = {
        "resamples": int(n_boot),
        "seed": int(seed),
        "roc_auc": {c: counts(auc_all[:, i]) for i, c in enumerate(result["classes"])},
        "f1": {c: counts(f1_all[:, i]) for i, c in enumerate(result["classes"])},
        "averages": {"used": int(n_boot), "dropped": 0},
        "dropped_means": "a resample without a class has no AUC (or F1) for it; its interval uses the rest",
    }
    for i, c in enumerate(result["classes"]):
        result["per_class"][c]["f1_ci"] = _percentile_ci(f1_all[:, i], confidence)
        if result["roc_auc"][c] is not None:
            result["roc_auc_ci"][c] = _percentile_ci(auc_all[:, i], confidence)
    for a in ("weighted", "macro"):
        for m in ("precision", "recall", "f1"):
            result[a][f"{m}_ci"] = _percentile_ci(np.concatenate(avgs[a][m]), confidence)


# ------------------------------------------------------------------------------------------ calibration
def fit_temperature(val_logits, val_labels, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T > 0 minimising the validation NLL of softmax(logits / T) (Guo et al. 2017).

    A bounded 1-D search on log T: deterministic, and it cannot run away to 0 on separable data.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    z = np.asarray(val_logits, dtype=np.float64)
    y = np.asarray(val_labels, dtype=np.int64)
    if z.ndim != 2 or len(z) == 0 or len(z) != len(y):
        raise CxrtlError("temperature scaling needs a non-empty validation subset; check the split")
    true_logit = z[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.mean(logsumexp(z / t, axis=1) - true_logit / t))

    res = minimize_scalar(
        nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded", options={"xatol": 1e-6}
    )
    t = float(math.exp(res.x))
    log.info("temperature %.4f: validation NLL %.4f -> %.4f", t, nll(0.0), nll(res.x))
    return t


# ------------------------------------------------------------------------------------- operating point
def resolve_class(name: str, classes: Sequence[str]) -> int:
    """Index of class ``name`` (exact, else case-insensitive) or a one-line error listing the classes."""
    classes = list(classes)
    if name in classes:
        return classes.index(name)
    folded = [c.lower() for c in classes]
    if folded.count(name.lower()) == 1:
        return folded.index(name.lower())
    raise CxrtlError(
        f"positive class {name!r} is not one of the checkpoint's classes {classes}; "
        "pass one of those to --positive"
    )


def threshold_for_sensitivity(is_positive, scores, target: float) -> float:
    """The highest threshold t with sensitivity(score >= t) >= target on these samples."""
    pos = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if not 0 < target <= 1:
        raise CxrtlError(f"target sensitivity must be in (0, 1], not {target}; e.g. 0.95")
    if not pos.any():
        raise CxrtlError("no positive images to pick an operating point from; check the split and --positive")
    pos_scores = np.sort(s[pos])[::-1]
    needed = math.ceil(target * len(pos_scores) - 1e-9)
    return float(pos_scores[max(needed, 1) - 1])


def binary_rates(is_positive, scores, threshold: float, confidence: float = CONFIDENCE) -> dict:
    """Sensitivity, specificity, PPV and NPV (with Wilson intervals) of ``score >= threshold``."""
    pos = np.asarray(is_positive, dtype=bool)
    hit = np.asarray(scores, dtype=np.float64) >= threshold
    tp, fn = int((pos & hit).sum()), int((pos & ~hit).sum())
    fp, tn = int((~pos & hit).sum()), int((~pos & ~hit).sum())

    def rate(a: int, b: int) -> float | None:
        return a / (a + b) if a + b else None

    return {
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
        "sensitivity": rate(tp, fn),
        "sensitivity_ci": wilson_interval(tp, tp + fn, confidence),
        "specificity": rate(tn, fp),
        "specificity_ci": wilson_interval(tn, tn + fp, confidence),
        "ppv": rate(tp, fp),
        "ppv_ci": wilson_interval(tp, tp + fp, confidence),
        "npv": rate(tn, fn),
        "npv_ci": wilson_interval(tn, tn + fn, confidence),
    }


def operating_point(
    val_y,
    val_probs,
    test_y,
    test_probs,
    classes: Sequence[str],
    positive: str,
    target_sensitivity: float = 0.95,
    confidence: float = CONFIDENCE,
    chosen_on: str = "validation",
) -> dict:
    """Pick the threshold on P(positive) reaching ``target_sensitivity`` on validation; report it on test.

    Also reports the argmax rule on test for comparison (the paper's only operating point). ``chosen_on``
    names the subset ``val_*`` come from (the calibration subset, when the split has one), for the warning.
    """
    i = resolve_class(positive, classes)
    val_pos = np.asarray(val_y) == i
    test_pos = np.asarray(test_y) == i
    val_scores = np.asarray(val_probs, dtype=np.float64)[:, i]
    test_scores = np.asarray(test_probs, dtype=np.float64)[:, i]
    t = threshold_for_sensitivity(val_pos, val_scores, target_sensitivity)
    argmax_hit = np.asarray(test_probs).argmax(axis=1) == i
    n_pos = int(val_pos.sum())
    warning = (
        f"the threshold was chosen on only {n_pos} {chosen_on} {list(classes)[i]} image(s) (fewer than "
        f"{FEW_POSITIVES}); a threshold set for a target sensitivity on so few is unreliable, and the "
        "argmax rule may serve better"
        if n_pos < FEW_POSITIVES
        else None
    )
    return {
        "positive": list(classes)[i],
        "target_sensitivity": float(target_sensitivity),
        "threshold": t,
        "rule": f"predict {list(classes)[i]} when P({list(classes)[i]}) >= threshold",
        "val": binary_rates(val_pos, val_scores, t, confidence),
        "test": binary_rates(test_pos, test_scores, t, confidence),
        "test_argmax": binary_rates(test_pos, argmax_hit.astype(np.float64), 0.5, confidence),
        "warning": warning,
    }
