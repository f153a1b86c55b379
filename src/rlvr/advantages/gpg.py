"""GPG (Group Policy Gradient, arXiv 2504.02546): group-centred rewards, no std, rescaled by how many
samples of the batch carry a signal."""

from __future__ import annotations

from torch import Tensor

from rlvr.advantages.base import GroupBaseline, group_centre, in_constant_group
from rlvr.batch import RolloutBatch
from rlvr.options import choose

# advantage.alpha: (rewards [N], group_ids [N]) -> how many of the N samples "carry a signal" (alpha = N / that).
SIGNAL_COUNTS = {
    "nonzero_rewards": lambda rewards, gids: int((rewards != 0).sum()),
    "valid_samples": lambda rewards, gids: int((~in_constant_group(rewards, gids)).sum()),
}


class GPGAdvantage(GroupBaseline):
    """A_i = alpha * (r_i - mean_group(r)), alpha = N / M over the batch this rank's estimator sees (M = 0
    counts as 1); an all-equal group gets exactly 0.

    alpha: what M counts. "nonzero_rewards" (default): the non-zero rewards, as verl's `gpg` computes it and
      the issue words it; with 0/1 rewards and low accuracy M is small, so alpha (and the gradient) is large.
      "valid_samples": the samples of groups whose rewards are not all equal, the paper's alpha = B / M
      (its open-r1 trainer's), so alpha >= 1 only grows as groups without signal are dropped.
    """

    def __init__(self, alpha: str = "nonzero_rewards"):
        self._signal_count = choose("advantage.alpha", alpha, SIGNAL_COUNTS)
        self.alpha = alpha

    def per_sample(self, rewards: Tensor, batch: RolloutBatch) -> Tensor:
        alpha = rewards.numel() / max(self._signal_count(rewards.float(), batch.group_ids), 1)
        return alpha * group_centre(rewards, batch.group_ids)[0]
