"""OPO (On-Policy RL with Optimal reward baseline, arXiv 2505.23585): the group's length-weighted mean reward
is the baseline, the variance-minimising one for a sequence-summed loss."""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.advantages.base import GroupBaseline, in_constant_group
from rlvr.batch import RolloutBatch


class OPOAdvantage(GroupBaseline):
    """A_i = r_i - sum_j |y_j| r_j / sum_j |y_j| over i's group, |y| = the response's scored (loss) tokens;
    no std division (as in verl's `opo`). A group of equal rewards gets exactly 0."""

    def per_sample(self, rewards: Tensor, batch: RolloutBatch) -> Tensor:
        gids = batch.group_ids
        lengths = batch.loss_mask.sum(-1).float()
        num_groups = int(gids.max()) + 1
        weighted = torch.zeros(num_groups, device=rewards.device).index_add_(0, gids, lengths * rewards)
        total = torch.zeros(num_groups, device=rewards.device).index_add_(0, gids, lengths)
        baseline = (weighted / total.clamp(min=1))[gids]
        # An all-equal group gets exactly 0, not r - r * (1 +- ulp).
        return torch.where(in_constant_group(rewards, gids), torch.zeros_like(rewards), rewards - baseline)
