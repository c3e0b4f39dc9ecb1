"""Dice/IoU, the bootstrap interval, mask clean-up and the Dice+BCE loss against independent references."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtl.segmentation.metrics import dice_iou, mean_interval
from cxrtl.segmentation.postprocess import clean_mask


def test_dice_iou_hand_computed():
    pred = np.zeros((4, 4), np.uint8)
    true = np.zeros((4, 4), np.uint8)
    pred[0, 0:3] = 255  # 3 pixels
    true[0, 1:4] = 1  # 3 pixels, 2 shared
    d, i = dice_iou(pred, true)
    assert d == pytest.approx(2 * 2 / (3 + 3))  # 0.6667
    assert i == pytest.approx(2 / 4)  # union 4
    assert dice_iou(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)
    assert dice_iou(np.ones((3, 3)), np.zeros((3, 3))) == (0.0, 0.0)


def test_dice_iou_match_sklearn_f1_and_jaccard():
    from sklearn.metrics import f1_score, jaccard_score

    rng = np.random.default_rng(1)
    pred, true = rng.random((20, 30)) > 0.6, rng.random((20, 30)) > 0.4
    d, i = dice_iou(pred, true)
    assert d == pytest.approx(f1_score(true.ravel(), pred.ravel()))
    assert i == pytest.approx(jaccard_score(true.ravel(), pred.ravel()))


def test_mean_interval_brackets_the_mean():
    v = np.linspace(0.8, 1.0, 50)
    m = mean_interval(v)
    assert m["mean"] == pytest.approx(0.9)
    assert m["ci_low"] < 0.9 < m["ci_high"] and m["ci_high"] - m["ci_low"] < 0.05


def test_clean_mask_keeps_two_largest_and_fills_holes():
    m = np.zeros((20, 20), bool)
    m[2:12, 1:7] = True  # left lung, 60 px
    m[2:14, 12:18] = True  # right lung, 72 px
    m[5, 3] = False  # a hole in the left lung
    m[17, 9] = True  # a speck (a marker)
    out = clean_mask(m)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}
    assert out[17, 9] == 0 and out[5, 3] == 255
    assert (out > 0).sum() == 60 + 72


def test_dice_bce_loss_is_bce_plus_one_minus_soft_dice():
    pytest.importorskip("segmentation_models_pytorch")
    import torch

    from cxrtl.segmentation.losses import DiceBCELoss

    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    p = 1 / (1 + np.exp(-logits.numpy().ravel()))
    t = target.numpy().ravel()
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    soft_dice = 2 * (p * t).sum() / (p.sum() + t.sum())
    assert float(DiceBCELoss()(logits, target)) == pytest.approx(bce + 1 - soft_dice, abs=1e-4)
