"""Advantage interface, and the group statistics every group-relative estimator shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from rlvr.batch import RolloutBatch
from rlvr.options import choose


class AdvantageEstimator(ABC):
    """Reads the roll-out batch (rewards, correctness, masks, judge output...) and returns [N, C] advantages.

    It may add fields (e.g. `rts`) and metrics to the batch; it must not change rewards or masks.
    """

    @abstractmethod
    def __call__(self, batch: RolloutBatch) -> Tensor: ...


class GroupBaseline(AdvantageEstimator):
    """An estimator whose advantage is one value per sample, computed from a reward vector and the batch's
    groups (and lengths), the same on every scored token. SGPO can build on any of them (`advantage.base`):
    it hands them its shaped rewards in place of the batch's."""

    @abstractmethod
    def per_sample(self, rewards: Tensor, batch: RolloutBatch) -> Tensor:
        """[N] advantages for the [N] `rewards` of `batch`'s samples."""

    def __call__(self, batch: RolloutBatch) -> Tensor:
        return broadcast_to_tokens(self.per_sample(scored_rewards(batch, type(self).__name__), batch), batch.loss_mask)


def scored_rewards(batch: RolloutBatch, who: str) -> Tensor:
    if batch.rewards is None:
        raise ValueError(f"{who} needs batch.rewards: score the batch with a reward first")
    return batch.rewards.float()


def group_centre(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, int]:
    """Float rewards minus their group's mean [N], and the number of groups.

    A group whose rewards are all equal gets exactly 0: the float mean of equal values can miss them by an
    ulp, and no epsilon should ever divide a non-zero by ~0.
    """
    rewards = rewards.float()
    num_groups = int(group_ids.max().item()) + 1
    counts = torch.bincount(group_ids, minlength=num_groups).float()
    means = torch.zeros(num_groups, device=rewards.device).index_add_(0, group_ids, rewards) / counts
    constant = in_constant_group(rewards, group_ids)
    return torch.where(constant, torch.zeros_like(rewards), rewards - means[group_ids]), num_groups


def in_constant_group(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """[N] bool: the sample's group has all rewards equal."""
    num_groups = int(group_ids.max().item()) + 1
    group_max = rewards.new_full((num_groups,), float("-inf")).scatter_reduce(0, group_ids, rewards, "amax")
    group_min = rewards.new_full((num_groups,), float("inf")).scatter_reduce(0, group_ids, rewards, "amin")
    return (group_max == group_min)[group_ids]


def _group_scaled(rewards: Tensor, group_ids: Tensor, eps: float) -> Tensor:
    centred, num_groups = group_centre(rewards, group_ids)
    return centred / (group_std(centred, group_ids, num_groups)[group_ids] + eps)


def _batch_scaled(rewards: Tensor, group_ids: Tensor, eps: float) -> Tensor:
    rewards = rewards.float()
    std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    return group_centre(rewards, group_ids)[0] / (std + eps)


def _unscaled(rewards: Tensor, group_ids: Tensor, eps: float) -> Tensor:
    return group_centre(rewards, group_ids)[0]


# advantage.scale: (rewards [N], group_ids [N], eps) -> group-relative advantages [N]; resolve it once with `choose`.
Scale = Callable[[Tensor, Tensor, float], Tensor]
SCALES: dict[str, Scale] = {"group": _group_scaled, "batch": _batch_scaled, "none": _unscaled}


def group_normalize(rewards: Tensor, group_ids: Tensor, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """Group-relative advantage per sample: (r - mean_group) / std.

    scale: "group" divides by the group's std (GRPO), "batch" by the std of the whole batch,
    "none" does not divide (Dr. GRPO). A group whose rewards are all equal gets exactly 0, whatever
    the scale. Std is the unbiased sample std, as in the GRPO paper's and TRL's reference code.
    """
    return choose("advantage.scale", scale, SCALES)(rewards, group_ids, eps)


def group_std(centred: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """Unbiased std of each group [num_groups], from rewards already centred on their group mean."""
    counts = torch.bincount(group_ids, minlength=num_groups).float()
    sq = torch.zeros(num_groups, device=centred.device).index_add_(0, group_ids, centred**2)
    return (sq / (counts - 1).clamp(min=1)).sqrt()


def whiten(values: Tensor, mask: Tensor, eps: float) -> Tensor:
    """(values - mean) / sqrt(var + eps) over the tokens `mask` keeps (unbiased var), 0 elsewhere: the batch
    whitening of REINFORCE++ (verl's masked_whiten)."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1)
    var = (((values - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def broadcast_to_tokens(per_sample: Tensor, mask: Tensor) -> Tensor:
    """[N] advantages -> [N, C] on the tokens `mask` keeps, 0 elsewhere."""
    return per_sample[:, None] * mask.to(per_sample.dtype)
