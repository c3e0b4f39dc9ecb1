"""The paper's optimiser and learning-rate schedule (§IV): NAdam stepped down by MultiStepLR."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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


# Warm-up length when several processes share the work and none is asked for: a few hundred steps, at most
# the first epoch (a small dataset on 8 GPUs has only tens of steps an epoch).
DEFAULT_WARMUP_STEPS = 200


@dataclass(frozen=True)
class Warmup:
    """Linear learning-rate warm-up: step i (0-based) runs at (i + 1) / steps of the scheduled rate."""

    steps: int = 0

    def factor(self, step: int) -> float:
        return 1.0 if step >= self.steps else (step + 1) / self.steps


def resolve_warmup(cfg: TrainConfig, world_size: int, steps_per_epoch: int) -> Warmup:
    """``cfg.warmup_steps`` when given; else none in one process (the paper's setting), and with several,
    :data:`DEFAULT_WARMUP_STEPS` capped at one epoch: the lr rule scales the rate with the global batch
    (8 GPUs x batch 16 -> NAdam at 8e-3), too high for the first steps from ImageNet weights."""
    steps = getattr(cfg, "warmup_steps", None)
    if steps is None:
        steps = 0 if world_size <= 1 else min(DEFAULT_WARMUP_STEPS, max(steps_per_epoch, 1))
    return Warmup(int(steps))
