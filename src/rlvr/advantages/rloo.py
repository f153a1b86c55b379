"""RLOO (REINFORCE Leave-One-Out, arXiv 2402.14740): each sample's baseline is the mean reward of the other
samples of its group."""

from __future__ import annotations

from torch import Tensor

from rlvr.advantages.base import GroupBaseline, group_centre
from rlvr.batch import RolloutBatch


class RLOOAdvantage(GroupBaseline):
    """A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_group(r)), no std division.

    Needs at least 2 samples per group (verl silently uses baseline 0 for a lone sample; here it is an error).
    """

    def per_sample(self, rewards: Tensor, batch: RolloutBatch) -> Tensor:
        sizes = batch.group_ids.bincount()[batch.group_ids].float()
        if (sizes < 2).any():
            raise ValueError("advantage=rloo needs at least 2 samples per group (rollout.num_generations >= 2)")
        return group_centre(rewards, batch.group_ids)[0] * sizes / (sizes - 1)
