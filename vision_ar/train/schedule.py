"""Learning-rate schedule: linear warmup, then cosine / linear decay to lr * min_lr_ratio, or constant.

The schedule is a pure function of the optimizer step, so resuming needs only the step number: each param
group keeps its own `base_lr` and gets base_lr * lr_multiplier(step) before every step.
"""
from __future__ import annotations

import math

import torch

from .config import TrainConfig


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate for the optimizer step with 0-based index `step`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.lr_schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # linear
        shape = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Apply the multiplier to every group's base_lr; return the first group's lr (for logging)."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * multiplier
    return optimizer.param_groups[0]["lr"]
