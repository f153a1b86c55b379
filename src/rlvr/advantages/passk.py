"""Pass@k training (arXiv 2508.10751): advantages for the group's pass@k instead of each sample's pass@1.

With the group's n samples of which c are correct, split into all size-k subsets, a subset scores 1 if any
sample in it is correct. The paper's analytic form (no subsets are drawn):
    R = 1 - C(n - c, k) / C(n, k)                  mean subset reward (the group's unbiased pass@k)
    sigma = sqrt(R (1 - R))
    A_correct = (1 - R) / sigma
    A_wrong = (1 - R - C(n - c - 1, k - 1) / C(n - 1, k - 1)) / sigma
k = 1 is GRPO with the population std. k must be below the group size n: at k = n the only subset is the
whole group, so sigma = 0 in every group and every advantage would be 0 (an error, not a silent no-op).
Where sigma = 0 (no correct sample, or so few wrong ones that every k-subset passes) the group gets exactly 0:
there is nothing to improve on its pass@k.
It reads `batch.correct` (pass/fail), not the shaped reward. verl's `grpo_passk` is a different method
(2503.19595: only the best sample gets r_max - r_second); this is the 2508.10751 one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.advantages.base import AdvantageEstimator, broadcast_to_tokens
from rlvr.batch import RolloutBatch
from rlvr.options import check


def log_comb(n: Tensor, k: int) -> Tensor:
    """log C(n, k), -inf where n < k (no such subset)."""
    value = torch.lgamma(n + 1) - torch.lgamma(torch.full_like(n, k + 1.0)) - torch.lgamma((n - k).clamp(min=0) + 1)
    return torch.where(n >= k, value, torch.full_like(n, float("-inf")))


class PassKAdvantage(AdvantageEstimator):
    """k: the pass@k the group is trained for, 1 <= k < rollout.num_generations (checked on the batch)."""

    def __init__(self, k: int = 4):
        self.k = check("advantage.k", k, integer=True, low=1)

    def __call__(self, batch: RolloutBatch) -> Tensor:
        if batch.correct is None:
            raise ValueError("advantage=passk needs batch.correct: score the batch with a reward first")
        gids, k = batch.group_ids, self.k
        num_groups = int(gids.max()) + 1
        n = torch.bincount(gids, minlength=num_groups).double()
        if (n <= k).any():  # k = n: one subset per group, sigma 0, every advantage 0
            raise ValueError(f"advantage.k = {k} must be less than a group's {int(n.min())} samples (rollout.num_generations)")
        c = torch.zeros(num_groups, dtype=torch.float64, device=gids.device).index_add_(0, gids, batch.correct.double())
        wrong = n - c
        mean = 1 - (log_comb(wrong, k) - log_comb(n, k)).exp()
        sigma = (mean * (1 - mean)).clamp(min=0).sqrt()
        all_fail_with_me = (log_comb(wrong - 1, k - 1) - log_comb(n - 1, k - 1)).exp()  # P(subset with a wrong sample fails)
        signal = sigma > 0
        safe = torch.where(signal, sigma, torch.ones_like(sigma))
        a_correct = torch.where(signal, (1 - mean) / safe, 0.0)
        a_wrong = torch.where(signal, (1 - mean - all_fail_with_me) / safe, 0.0)
        per_sample = torch.where(batch.correct.bool(), a_correct[gids], a_wrong[gids]).float()
        return broadcast_to_tokens(per_sample, batch.loss_mask)
