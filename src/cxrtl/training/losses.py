"""Losses of the paper (§III-E): CE, weighted CE (1-CF, inverse CF) and focal loss; weights in buffers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CxrtlError

if TYPE_CHECKING:
    from ..config import TrainConfig

log = logging.getLogger(__name__)


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class, N_i, counted on the labels given (the training split only)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CxrtlError(f"labels outside 0..{num_classes - 1}; the data and classes disagree")
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def class_weights(
    counts: Sequence[int] | np.ndarray, kind: str = "1cf", classes: Sequence[str] | None = None
) -> torch.Tensor:
    """Per-class weights: ``1cf`` w_i = 1 - N_i/M, ``icf`` w_i = M/N_i (M = all training images)."""
    counts = np.asarray(counts, dtype=np.float64)
    names = list(classes) if classes is not None else [str(i) for i in range(len(counts))]
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise CxrtlError(
            f"class {empty[0]!r} has no training images, so class weights are undefined; "
            "use more data or a different split"
        )
    m = counts.sum()
    if kind == "1cf":
        w = 1.0 - counts / m
    elif kind == "icf":
        w = m / counts
    else:
        raise CxrtlError(f"unknown class weighting {kind!r}; expected 1cf or icf")
    return torch.tensor(w, dtype=torch.float32)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with optional class weights (PyTorch's weighted mean: sum w_y l / sum w_y)."""

    weight: torch.Tensor | None  # a registered buffer

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", None if weight is None else weight.detach().float().clone())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(logits.dtype)
        return F.cross_entropy(logits, target, weight=w)


class FocalLoss(nn.Module):
    """Focal loss, batch mean of ``-alpha_y (1 - p_y)^gamma log p_y`` (alpha None = 1 for every class)."""

    alpha: torch.Tensor | None  # a registered buffer

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None):
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("alpha", None if alpha is None else alpha.detach().float().clone())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.view(-1, 1)).squeeze(1)
        loss = -((1.0 - log_p.exp()).clamp_min(0).pow(self.gamma)) * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


def create_loss(
    name: str,
    train_labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    focal_gamma: float = 2.0,
    focal_alpha: str = "none",
) -> nn.Module:
    """The training loss by name (ce | wce-1cf | wce-icf | focal), weights from the training labels."""
    k = len(classes)
    if name == "ce":
        return WeightedCrossEntropy()
    if name in ("wce-1cf", "wce-icf"):
        return WeightedCrossEntropy(class_weights(class_counts(train_labels, k), name[4:], classes))
    if name == "focal":
        alpha = None
        if focal_alpha != "none":
            alpha = class_weights(class_counts(train_labels, k), focal_alpha, classes)
        return FocalLoss(focal_gamma, alpha)
    raise CxrtlError(f"unknown loss {name!r}; expected ce, wce-1cf, wce-icf or focal")


def training_loss(cfg: TrainConfig, train_ds, classes: Sequence[str]) -> nn.Module:
    """``cfg.loss``, its class weights counted on ``train_ds`` (its ``labels``, else each item's label)."""
    train_labels = getattr(train_ds, "labels", None)
    if train_labels is None:
        train_labels = [int(train_ds[i][1]) for i in range(len(train_ds))]
    loss_fn = create_loss(cfg.loss, train_labels, classes, cfg.focal_gamma, cfg.focal_alpha)
    weights = getattr(loss_fn, "weight", None)
    weights = getattr(loss_fn, "alpha", None) if weights is None else weights
    shown = (
        ""
        if weights is None
        else ", class weights " + ", ".join(f"{c} {w:.4g}" for c, w in zip(classes, weights.tolist()))
    )  # 4 significant digits: enough to compare with the paper's [0.829, 0.716, 0.518, 0.936]
    log.info("loss %s%s", cfg.loss, shown)
    return loss_fn
