"""GRPO (arXiv 2402.03300): each sample's reward relative to its group, the same value on every token."""

from __future__ import annotations

from torch import Tensor

from rlvr.advantages.base import SCALES, GroupBaseline
from rlvr.batch import RolloutBatch
from rlvr.options import check, choose


class GRPOAdvantage(GroupBaseline):
    """A_i = (r_i - mean_group(r)) / std, std per `scale`: group (GRPO), batch, or none (Dr. GRPO).
    eps (> 0) is added to the std: 0 would divide by 0, a negative one could flip signs."""

    def __init__(self, scale: str = "group", eps: float = 1e-6):
        self._normalize = choose("advantage.scale", scale, SCALES)
        self.scale, self.eps = scale, check("advantage.eps", eps, low=0, low_open=True)

    def per_sample(self, rewards: Tensor, batch: RolloutBatch) -> Tensor:
        return self._normalize(rewards, batch.group_ids, self.eps)
