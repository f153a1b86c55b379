"""The one cross-rank reduction plugins need: statistics that must agree on every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def global_mean(values: Tensor) -> float:
    """Mean over the values of every rank (all-reduce of sum and count); the plain mean without DDP."""
    total = torch.stack([values.float().sum(), torch.tensor(float(values.numel()), device=values.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()
