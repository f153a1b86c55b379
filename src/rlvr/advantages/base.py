"""Advantage interface, and the group statistics every group-relative estimator shares."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from rlvr.batch import RolloutBatch


class AdvantageEstimator(ABC):
    """Reads the roll-out batch (rewards, correctness, masks, judge output...) and returns [N, C] advantages.

    It may add fields (e.g. `rts`) and metrics to the batch; it must not change rewards or masks.
    """

    @abstractmethod
    def __call__(self, batch: RolloutBatch) -> Tensor: ...


SCALES = ("group", "batch", "none")


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"advantage scale must be one of {' | '.join(SCALES)}, got {scale!r}")
    return scale


def group_normalize(rewards: Tensor, group_ids: Tensor, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """Group-relative advantage per sample: (r - mean_group) / std.

    scale: "group" divides by the group's std (GRPO), "batch" by the std of the whole batch,
    "none" does not divide (Dr. GRPO). A group whose rewards are all equal gets exactly 0, whatever
    the scale (its centred rewards are exactly 0; no epsilon ever divides a non-zero by ~0).
    Std is the unbiased sample std, as in the GRPO paper's and TRL's reference code.
    """
    check_scale(scale)
    rewards = rewards.float()
    num_groups = int(group_ids.max().item()) + 1
    counts = torch.bincount(group_ids, minlength=num_groups).float()
    means = torch.zeros(num_groups, device=rewards.device).index_add_(0, group_ids, rewards) / counts
    # Exact zero for constant groups: float mean of equal values can miss them by an ulp.
    group_max = rewards.new_full((num_groups,), float("-inf")).scatter_reduce(0, group_ids, rewards, "amax")
    group_min = rewards.new_full((num_groups,), float("inf")).scatter_reduce(0, group_ids, rewards, "amin")
    constant = (group_max == group_min)[group_ids]
    centred = torch.where(constant, torch.zeros_like(rewards), rewards - means[group_ids])
    if scale == "none":
        return centred
    if scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        return centred / (std + eps)
    return centred / (group_std(centred, group_ids, num_groups)[group_ids] + eps)


def group_std(centred: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """Unbiased std of each group [num_groups], from rewards already centred on their group mean."""
    counts = torch.bincount(group_ids, minlength=num_groups).float()
    sq = torch.zeros(num_groups, device=centred.device).index_add_(0, group_ids, centred**2)
    return (sq / (counts - 1).clamp(min=1)).sqrt()


def broadcast_to_tokens(per_sample: Tensor, mask: Tensor) -> Tensor:
    """[N] advantages -> [N, C] on the tokens `mask` keeps, 0 elsewhere."""
    return per_sample[:, None] * mask.to(per_sample.dtype)
