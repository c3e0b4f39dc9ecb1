"""The paper's optimiser and learning-rate schedule (§IV): NAdam stepped down by MultiStepLR."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import TrainConfig


def create_optimizer(
    cfg: TrainConfig, params: Iterable[torch.nn.Parameter], world_size: int = 1
) -> torch.optim.Optimizer:
    """NAdam over the trainable ``params`` at ``cfg.lr``, or the paper's rule on the global batch."""
    trainable = [p for p in params if p.requires_grad]  # an extractor run freezes the backbone
    return torch.optim.NAdam(trainable, lr=cfg.resolved_lr(world_size), betas=(0.9, 0.999))


def create_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.MultiStepLR:
    """The lr times ``cfg.gamma`` at each of ``cfg.milestones`` (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
