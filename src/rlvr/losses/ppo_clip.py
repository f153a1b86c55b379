"""PPO's clipped surrogate on token ratios (GRPO, DAPO's clip-higher, dual-clip PPO)."""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.losses.base import PolicyLoss, masked_ratio
from rlvr.options import check
from rlvr.tensors import masked_mean


class PPOClipLoss(PolicyLoss):
    """loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high)), r_t = pi(y_t) / pi_old(y_t).

    clip_high > clip_low is DAPO's clip-higher.
    clip_ratio_c: dual-clip PPO (arXiv 1912.09729, verl's `clip_ratio_c`): on tokens with A_t < 0 the loss is
      at most -A_t * clip_ratio_c (> 1), so a token whose ratio has run far above 1 cannot push the loss
      without bound; null turns it off.
    """

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.2, clip_ratio_c: float | None = None, **options):
        super().__init__(**options)
        self.clip_low = check("loss.clip_low", clip_low, low=0, high=1, high_open=True)
        self.clip_high = check("loss.clip_high", clip_high, low=0)
        self.clip_ratio_c = check("loss.clip_ratio_c", clip_ratio_c, low=1, low_open=True, optional=True)

    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ratio = masked_ratio(logprobs, old_logprobs, mask)
        losses, stats = clipped_surrogate(ratio, advantages, mask, self.clip_low, self.clip_high)
        if self.clip_ratio_c is not None:
            bound = -advantages * self.clip_ratio_c
            lower = (advantages < 0) & (losses > bound)
            stats["clip_frac_lower"] = masked_mean(lower.to(ratio.dtype), mask).detach()
            losses = torch.where(lower, bound, losses)
        return losses, stats


def clipped_surrogate(ratio: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The pessimistic (max) of the unclipped and clipped losses per token, with clip fraction and mean ratio."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), mask).detach(),
        "ratio_mean": masked_mean(ratio.detach(), mask),
    }
    return torch.maximum(unclipped, clipped), stats
