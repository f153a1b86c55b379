"""CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, not the update.

loss_t = -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) * A_t * log pi(y_t): the clipped weight is a constant
factor (stop-gradient), so every token keeps its REINFORCE gradient, only scaled; PPO instead drops the
gradient of clipped tokens, which are often the rare "fork" tokens reasoning needs.
"""

from __future__ import annotations

from torch import Tensor

from rlvr.losses.base import PolicyLoss, masked_ratio
from rlvr.options import check
from rlvr.tensors import masked_mean


class CISPOLoss(PolicyLoss):
    """clip_high: the weight's upper bound is 1 + clip_high (the paper's eps_high; TRL's `epsilon_high` for
    cispo is the bound itself, recommended 5.0, which is clip_high = 4.0 here; verl uses 1 + clip_ratio_high).
    clip_low: null (the paper: no lower bound, only eps_high is tuned) or the lower bound 1 - clip_low.
    The loss value is not a surrogate objective (its gradient is what counts); at r = 1 it is -A log pi."""

    def __init__(self, clip_high: float = 4.0, clip_low: float | None = None, **options):
        super().__init__(**options)
        self.clip_high = check("loss.clip_high", clip_high, low=0)
        self.clip_low = check("loss.clip_low", clip_low, low=0, high=1, high_open=True, optional=True)

    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ratio = masked_ratio(logprobs, old_logprobs, mask).detach()
        low = None if self.clip_low is None else 1.0 - self.clip_low
        weight = ratio.clamp(low, 1.0 + self.clip_high)
        safe_logprobs = logprobs.masked_fill(~mask.bool(), 0.0)  # -inf on padding must not give 0 * inf = nan
        stats = {
            "clip_frac": masked_mean((weight != ratio).to(ratio.dtype), mask).detach(),
            "ratio_mean": masked_mean(ratio, mask),
        }
        return -weight * advantages * safe_logprobs, stats
