"""GRPO (arXiv 2402.03300): each sample's reward relative to its group, the same value on every token."""

from __future__ import annotations

from torch import Tensor

from rlvr.advantages.base import SCALES, AdvantageEstimator, broadcast_to_tokens
from rlvr.batch import RolloutBatch
from rlvr.options import choose


class GRPOAdvantage(AdvantageEstimator):
    """A_i = (r_i - mean_group(r)) / std, std per `scale`: group (GRPO), batch, or none (Dr. GRPO)."""

    def __init__(self, scale: str = "group", eps: float = 1e-6):
        self.scale, self.eps = scale, eps
        self._normalize = choose("advantage.scale", scale, SCALES)

    def __call__(self, batch: RolloutBatch) -> Tensor:
        per_sample = self._normalize(batch.rewards, batch.group_ids, self.eps)
        return broadcast_to_tokens(per_sample, batch.loss_mask)
