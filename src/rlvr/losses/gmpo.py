"""GMPO (Geometric-Mean Policy Optimization, arXiv 2507.20673; verl's `geo_mean`).

Per sequence: J_i = A_i * exp(mean_t clip_A(log r_t)), the geometric mean of the token ratios, each clipped
in log space to [-clip_low, clip_high] on the side that matters for the sign of A (PPO's pessimism, token
by token): clip_A(x) = sgn(A) * min(sgn(A) x, sgn(A) clamp(x)). The geometric mean is far less moved by
one outlier token than the arithmetic mean of PPO, which allows the wider clip (the paper: e^-0.4, e^0.4).
Written per token, like GSPO here: token t carries the value -A_t * s_i and the gradient
-A_t * s_i * d clip_A(log r_t), so with one advantage per sequence and `seq_mean_token_mean` the loss and
its gradient are the paper's (verl averages over sequences the same way and ignores the aggregation).
Per-token advantages (e.g. SGPO's mask_after_error) weigh each token's share; verl would average them first.
"""

from __future__ import annotations

from torch import Tensor

from rlvr.losses.base import PolicyLoss
from rlvr.options import check
from rlvr.tensors import masked_mean


class GMPOLoss(PolicyLoss):
    """clip_low, clip_high: the log-space clip range of each token's log-ratio (paper and verl's recipe: 0.4)."""

    def __init__(self, clip_low: float = 0.4, clip_high: float = 0.4, aggregation: str = "seq_mean_token_mean", **options):
        super().__init__(aggregation=aggregation, **options)
        self.clip_low = check("loss.clip_low", clip_low, low=0)
        self.clip_high = check("loss.clip_high", clip_high, low=0)

    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = (logprobs - old_logprobs).masked_fill(~mask.bool(), 0.0)
        bounded = log_ratio.clamp(-self.clip_low, self.clip_high)
        sign = advantages.sign()
        clipped = sign * (sign * log_ratio).minimum(sign * bounded)
        sequence_ratio = masked_mean(clipped, mask, dim=-1).detach().exp()  # s_i
        losses = -advantages * sequence_ratio[:, None] * (1.0 + clipped - clipped.detach())
        stats = {
            "clip_frac": masked_mean((bounded != log_ratio).to(log_ratio.dtype), mask).detach(),
            "ratio_mean": sequence_ratio[mask.sum(-1) > 0].mean() if mask.any() else sequence_ratio.new_ones(()),
        }
        return losses, stats
