"""The learning-rate schedule (the optimizer itself is a `_partial_` node: torch.optim.AdamW by default)."""

from __future__ import annotations

import math
from typing import Any

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


def apply_optimizer_changes(optimizer: torch.optim.Optimizer, scheduler: Any, changes: dict[str, tuple[Any, Any]]) -> None:
    """Put changed optimizer settings ({name: (then, now)}, e.g. on resume) into a restored optimizer. A new lr
    rescales the schedule: this step's lr and every later one are the new lr times the schedule's factor."""
    for name, (then, now) in changes.items():
        if name in ("_target_", "_partial_", "_convert_"):
            raise ValueError(f"optimizer.{name} changed from {then!r} to {now!r}: a resumed run keeps its optimizer class")
        for group in optimizer.param_groups:
            if name not in group:
                raise ValueError(f"optimizer.{name} changed from {then!r} to {now!r}, but the optimizer has no such setting to change")
            if name == "lr":
                group["lr"] *= now / then
                group["initial_lr"] = now
            else:
                group[name] = type(group[name])(now) if isinstance(group[name], tuple) else now
        if name == "lr" and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [now] * len(scheduler.base_lrs)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
