"""Metrics from predictions: hand-computed cases, intervals, calibration and operating points."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrtl.errors import CxrtlError
from cxrtl.evaluation import metrics as M

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def onehot_probs(pred, k, conf=0.8):
    """Probabilities whose argmax is ``pred``, with ``conf`` on the predicted class."""
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_hand_computed_confusion_matrix_and_scores():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    m = M.compute_metrics(y, onehot_probs(pred, 3), CLASSES, n_boot=0)
    # rows are true classes, columns predicted
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["confusion_matrix_axes"]["rows"] == "true"
    assert m["n"] == 6 and m["correct"] == 4
    assert m["accuracy"] == pytest.approx(4 / 6)
    pc = m["per_class"]
    assert pc["COVID"]["precision"] == pytest.approx(1.0)
    assert pc["COVID"]["recall"] == pytest.approx(2 / 3)
    assert pc["COVID"]["f1"] == pytest.approx(0.8)
    assert pc["Normal"]["precision"] == pytest.approx(0.5)
    assert pc["Normal"]["recall"] == pytest.approx(0.5)
    assert pc["Viral Pneumonia"]["precision"] == pytest.approx(0.5)
    assert pc["Viral Pneumonia"]["recall"] == pytest.approx(1.0)
    assert [pc[c]["support"] for c in CLASSES] == [3, 2, 1]
    # weighted by support
    assert m["weighted"]["precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 1 * 0.5) / 6)
    assert m["weighted"]["recall"] == pytest.approx(m["accuracy"])
    assert m["macro"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["loss"] == pytest.approx(-math.log(0.8) * 4 / 6 - math.log(0.1) * 2 / 6)
    json.dumps(m)  # JSON-serialisable as is


def test_class_absent_from_labels_is_kept():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    m = M.compute_metrics(y, onehot_probs(pred, 3), CLASSES, n_boot=50)
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert m["per_class"]["Viral Pneumonia"]["support"] == 0
    assert m["per_class"]["Viral Pneumonia"]["recall_ci"] is None
    assert m["roc_auc"]["Viral Pneumonia"] is None
    assert m["roc_auc_ci"]["Viral Pneumonia"] is None
    assert m["roc_auc"]["COVID"] is not None


def _pairwise_auc(is_pos: np.ndarray, scores: np.ndarray) -> float:
    """AUC by its definition (Mann-Whitney): P(positive scores above negative), ties counting one half."""
    pos, neg = scores[is_pos], scores[~is_pos]
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(pos) * len(neg)))


def test_auc_of_a_hand_counted_example():
    # positives 0.9, 0.6, 0.4 vs negatives 0.7, 0.4, 0.1: pairs above 3 + 2 + 1, one tie (0.4 = 0.4) -> 6.5 / 9
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.4, 0.7, 0.4, 0.1])
    m = M.compute_metrics(y, np.stack([1 - s, s], axis=1), ["NORMAL", "PNEUMONIA"], n_boot=0)
    assert m["roc_auc"]["PNEUMONIA"] == pytest.approx(6.5 / 9)


def test_roc_auc_by_definition_and_loss_passthrough():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    p = M.softmax(rng.normal(size=(200, 3)) + 2 * np.eye(3)[y])
    m = M.compute_metrics(y, p, CLASSES, loss=0.123, n_boot=100)
    for i, c in enumerate(CLASSES):
        assert m["roc_auc"][c] == pytest.approx(_pairwise_auc(y == i, p[:, i]))
        lo, hi = m["roc_auc_ci"][c]
        assert lo <= m["roc_auc"][c] <= hi
    assert m["roc_auc_macro"] == pytest.approx(np.mean(list(m["roc_auc"].values())))
    assert m["loss"] == 0.123
    assert M.compute_metrics(y, p, CLASSES, n_boot=0)["loss"] == pytest.approx(
        -np.mean(np.log(p[np.arange(200), y]))
    )


def test_weighted_auc_equals_resampled_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)  # many ties
    idx = rng.integers(0, 300, 300)
    mult = np.bincount(idx, minlength=300)[None]
    assert M._weighted_auc(y == 1, s, mult)[0] == pytest.approx(roc_auc_score(y[idx] == 1, s[idx]))


def test_wilson_known_values():
    lo, hi = M.wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = M.wilson_interval(0, 10)
    assert lo == pytest.approx(0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    assert M.wilson_interval(0, 0) is None
    # the paper's 576/586: about +-1 point, so 98.0% vs 98.5% is not resolved
    lo, hi = M.wilson_interval(576, 586)
    assert lo < 0.975 and hi > 0.985


def test_intervals_present_contain_estimates_and_are_seeded():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 150)
    p = M.softmax(rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[y])
    a = M.compute_metrics(y, p, CLASSES, seed=7, n_boot=200)
    b = M.compute_metrics(y, p, CLASSES, seed=7, n_boot=200)
    c = M.compute_metrics(y, p, CLASSES, seed=8, n_boot=200)
    assert a == b
    assert a["weighted"]["f1_ci"] != c["weighted"]["f1_ci"]
    lo, hi = a["accuracy_ci"]
    assert lo < a["accuracy"] < hi
    for cls in CLASSES:
        for key in ("precision", "recall", "f1"):
            lo, hi = a["per_class"][cls][f"{key}_ci"]
            assert lo <= a["per_class"][cls][key] <= hi
    for avg in ("weighted", "macro"):
        lo, hi = a[avg]["f1_ci"]
        assert lo <= a[avg]["f1"] <= hi


def test_ece_and_bins():
    # every sample at confidence 0.8, 80% right: perfectly calibrated
    y = np.array([0] * 8 + [1] * 2)
    p = np.tile([0.8, 0.2], (10, 1))
    cal = M.calibration_bins(y, p, n_bins=10)
    assert cal["ece"] == pytest.approx(0.0)
    assert sum(b["count"] for b in cal["bins"]) == 10
    full = [b for b in cal["bins"] if b["count"]]
    assert len(full) == 1 and full[0]["accuracy"] == pytest.approx(0.8)
    # all right at confidence 0.6: ECE 0.4
    assert M.calibration_bins(np.zeros(5, int), np.tile([0.6, 0.4], (5, 1)))["ece"] == pytest.approx(0.4)


def test_bad_inputs():
    with pytest.raises(CxrtlError):
        M.compute_metrics(np.array([], int), np.zeros((0, 3)), CLASSES)
    with pytest.raises(CxrtlError, match="outside"):
        M.compute_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3), CLASSES)
    with pytest.raises(ValueError):
        M.compute_metrics(np.array([0, 1]), np.full((2, 2), 0.5), CLASSES)


def test_fit_temperature_recovers_true_temperature():
    rng = np.random.default_rng(4)
    z = rng.normal(scale=3.0, size=(4000, 4))
    true_p = M.softmax(z, temperature=2.0)
    y = np.array([rng.choice(4, p=row) for row in true_p])
    t = M.fit_temperature(z, y)
    assert t == pytest.approx(2.0, rel=0.1)
    # separable data does not run away
    t_sep = M.fit_temperature(np.eye(4)[np.arange(40) % 4] * 10, np.arange(40) % 4)
    assert 0.05 <= t_sep <= 20


def test_threshold_for_sensitivity():
    pos = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.75, 0.5, 0.1])
    assert M.threshold_for_sensitivity(pos, s, 0.75) == 0.7
    assert M.threshold_for_sensitivity(pos, s, 1.0) == 0.6
    assert M.threshold_for_sensitivity(pos, s, 0.01) == 0.9
    r = M.binary_rates(pos, s, 0.7)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (3, 1, 1, 2)
    assert r["sensitivity"] == 0.75 and r["specificity"] == pytest.approx(2 / 3)
    with pytest.raises(CxrtlError):
        M.threshold_for_sensitivity(np.zeros(3, bool), np.zeros(3), 0.9)


def test_operating_point_reaches_target_on_validation():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 400)
    p = M.softmax(rng.normal(size=(400, 3)) + np.eye(3)[y])
    op = M.operating_point(y[:200], p[:200], y[200:], p[200:], CLASSES, "covid", 0.95)
    assert op["positive"] == "COVID"
    assert op["val"]["sensitivity"] >= 0.95
    assert op["test"]["sensitivity_ci"][0] <= op["test"]["sensitivity"] <= op["test"]["sensitivity_ci"][1]
    assert op["test"]["tp"] + op["test"]["fn"] == int((y[200:] == 0).sum())
    with pytest.raises(CxrtlError, match="--positive"):
        M.operating_point(y, p, y, p, CLASSES, "Lung_Opacity")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=40))
def test_properties(pairs):
    y = np.array([a for a, _ in pairs])
    pred = np.array([b for _, b in pairs])
    m = M.compute_metrics(y, onehot_probs(pred, 3, conf=0.6), CLASSES, n_boot=0)
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == len(y)
    assert cm.sum(axis=1).tolist() == [int((y == i).sum()) for i in range(3)]
    assert m["accuracy"] == pytest.approx(np.mean(y == pred))
    assert m["weighted"]["recall"] == pytest.approx(m["accuracy"])
    assert 0 <= m["ece"] <= 1


def test_three_positive_class_flags_its_interval_and_counts_dropped_resamples():
    """A class with 3 of 100 images: ~(97/100)^100 of resamples lack it, and its intervals are flagged."""
    from cxrtl.evaluation.markdown import evaluation_markdown

    rng = np.random.default_rng(3)
    y = np.array([0] * 3 + [1] * 50 + [2] * 47)
    p = rng.dirichlet(np.ones(3), size=len(y))
    p[np.arange(len(y)), y] += 1.0  # a good but imperfect model
    p /= p.sum(axis=1, keepdims=True)
    n_boot = 4000
    m = M.compute_metrics(y, p, CLASSES, n_boot=n_boot, seed=5)
    boot = m["bootstrap"]
    assert boot["resamples"] == n_boot and boot["seed"] == 5
    for c in CLASSES:
        assert boot["roc_auc"][c]["used"] + boot["roc_auc"][c]["dropped"] == n_boot
    # independent reference: P(no COVID image in a resample of 100) = (1 - 3/100)^100
    q = (1 - 3 / 100) ** 100
    expected, sd = n_boot * q, math.sqrt(n_boot * q * (1 - q))
    assert abs(boot["roc_auc"]["COVID"]["dropped"] - expected) < 5 * sd
    assert boot["roc_auc"]["Normal"]["dropped"] == 0
    assert m["per_class"]["COVID"]["ci_unreliable"] is True
    assert "3 positive" in m["per_class"]["COVID"]["ci_note"]
    assert m["per_class"]["Normal"]["ci_unreliable"] is False
    assert m["per_class"]["Normal"]["ci_note"] is None
    # a class with 95 of 100 images has only 5 negatives: flagged too
    m2 = M.compute_metrics(
        np.array([0] * 95 + [1] * 5), onehot_probs(np.zeros(100, int), 2), CLASSES[:2], n_boot=0
    )
    assert m2["per_class"]["COVID"]["ci_unreliable"] and "5 negative" in m2["per_class"]["COVID"]["ci_note"]
    report = evaluation_markdown(json.loads(json.dumps(m)))
    assert "| COVID † | 3 |" in report
    assert "† only 3 positive image(s) of COVID (fewer than 10)" in report
    assert f"COVID {boot['roc_auc']['COVID']['used']} (" in report
