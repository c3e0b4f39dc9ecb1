"""Losses of the paper: class weights from training counts, weighted CE, focal loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrtl.errors import CxrtlError
from cxrtl.training.losses import FocalLoss, WeightedCrossEntropy, class_counts, class_weights, create_loss

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def test_class_weights_1cf_and_icf():
    counts = class_counts([0] * 10 + [1] * 30 + [2] * 50 + [3] * 10, 4)
    assert counts.tolist() == [10, 30, 50, 10]
    np.testing.assert_allclose(class_weights(counts, "1cf").numpy(), [0.9, 0.7, 0.5, 0.9], rtol=1e-6)
    np.testing.assert_allclose(class_weights(counts, "icf").numpy(), [10, 100 / 30, 2, 10], rtol=1e-6)


def test_whole_covid_db_1cf_weights_match_reference():
    # REFERENCE.md: 1-CF on the whole COVID set is about [0.829, 0.716, 0.518, 0.936].
    w = class_weights([3616, 6012, 10192, 1345], "1cf").numpy()
    np.testing.assert_allclose(w, [0.829, 0.716, 0.518, 0.936], atol=1e-3)


def test_empty_class_and_bad_labels_are_user_errors():
    with pytest.raises(CxrtlError, match="'Normal' has no training images"):
        class_weights([3, 4, 0, 1], "icf", CLASSES)
    with pytest.raises(CxrtlError):
        class_counts([0, 5], 4)


def test_weighted_ce_is_the_hand_computed_eq_8_and_weights_are_a_buffer():
    # Three samples, 1-CF weights of the counts [10, 30, 50, 10]. Eq. 8/11 with the weighted mean that
    # the authors' nn.CrossEntropyLoss(weight=w) takes: sum_i w_yi * -log p_i(yi) / sum_i w_yi.
    ln = math.log
    logits = torch.tensor(
        [
            [ln(2.0), 0.0, 0.0, 0.0],  # p(COVID) = 2 / 5
            [0.0, 0.0, 0.0, 0.0],  # p(Lung_Opacity) = 1 / 4
            [0.0, 0.0, ln(3.0), ln(3.0)],  # p(Normal) = 3 / 8
        ]
    )
    y = torch.tensor([0, 1, 2])
    w = torch.tensor([0.9, 0.7, 0.5, 0.9])
    hand = (0.9 * -ln(2 / 5) + 0.7 * -ln(1 / 4) + 0.5 * -ln(3 / 8)) / (0.9 + 0.7 + 0.5)
    loss = WeightedCrossEntropy(w)
    assert loss(logits, y).item() == pytest.approx(hand, rel=1e-6)
    assert WeightedCrossEntropy()(logits, y).item() == pytest.approx(
        (-ln(2 / 5) - ln(1 / 4) - ln(3 / 8)) / 3, rel=1e-6
    )
    assert "weight" in dict(loss.named_buffers()) and "weight" in loss.state_dict()
    assert loss.to(torch.float64).weight.dtype == torch.float64  # follows .to() like any buffer


def test_focal_loss_formula_batch_mean_and_gamma_zero_is_ce():
    torch.manual_seed(1)
    logits, y = torch.randn(7, 4), torch.randint(0, 4, (7,))
    p = logits.softmax(1)[torch.arange(7), y]
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4])
    want = (-alpha[y] * (1 - p) ** 2 * p.log()).mean()
    torch.testing.assert_close(FocalLoss(2.0, alpha)(logits, y), want)
    torch.testing.assert_close(FocalLoss(2.0)(logits, y), (-((1 - p) ** 2) * p.log()).mean())
    torch.testing.assert_close(FocalLoss(0.0)(logits, y), F.cross_entropy(logits, y))
    assert "alpha" in FocalLoss(2.0, alpha).state_dict()


def test_create_loss_counts_only_the_labels_it_is_given():
    train_labels = np.array([0, 0, 0, 1, 2, 3, 3, 3])
    loss = create_loss("wce-1cf", train_labels, CLASSES)
    np.testing.assert_allclose(loss.weight.numpy(), 1 - np.array([3, 1, 1, 3]) / 8, rtol=1e-6)
    loss = create_loss("wce-icf", train_labels, CLASSES)
    np.testing.assert_allclose(loss.weight.numpy(), 8 / np.array([3, 1, 1, 3]), rtol=1e-6)
    focal = create_loss("focal", train_labels, CLASSES, focal_gamma=3.0, focal_alpha="1cf")
    assert focal.gamma == 3.0 and focal.alpha is not None
    assert create_loss("focal", train_labels, CLASSES).alpha is None
    assert create_loss("ce", train_labels, CLASSES).weight is None
    with pytest.raises(CxrtlError):
        create_loss("hinge", train_labels, CLASSES)
