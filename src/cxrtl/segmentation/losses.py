"""The segmentation loss: soft Dice + binary cross-entropy on the lung logit, summed."""

from __future__ import annotations

import torch


class DiceBCELoss(torch.nn.Module):
    """``BCE(logits, target) + (1 - soft Dice)``: BCE gives pixel gradients early, Dice balances lung vs
    background (lungs fill about a third of a radiograph). smp's DiceLoss computes the Dice part."""

    def __init__(self) -> None:
        super().__init__()
        from .model import _smp

        self.dice = _smp().losses.DiceLoss(mode="binary", from_logits=True)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, target) + self.dice(logits, target)
