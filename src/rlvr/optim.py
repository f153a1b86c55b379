"""The learning-rate schedule (the optimizer itself is a `_partial_` node: torch.optim.AdamW by default)."""

from __future__ import annotations

import math

import torch

from rlvr.options import check


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """lr factor per optimizer step: linear warm-up to 1, then a cosine down to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
    """`scheduler` node target: Lambda schedule over `total_steps` optimizer steps (given by the module)."""
    check("scheduler.warmup_steps", warmup_steps, integer=True, low=0)
    check("scheduler.min_lr_ratio", min_lr_ratio, low=0, high=1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio))
