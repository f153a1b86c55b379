"""PPO's clipped surrogate on token ratios (GRPO, DAPO's clip-higher)."""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.losses.base import PolicyLoss, masked_ratio
from rlvr.options import check
from rlvr.tensors import masked_mean


class PPOClipLoss(PolicyLoss):
    """loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high)), r_t = pi(y_t) / pi_old(y_t).

    clip_high > clip_low is DAPO's clip-higher.
    """

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.2, **options):
        super().__init__(**options)
        self.clip_low = check("loss.clip_low", clip_low, low=0, high=1, high_open=True)
        self.clip_high = check("loss.clip_high", clip_high, low=0)

    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ratio = masked_ratio(logprobs, old_logprobs, mask)
        return clipped_surrogate(ratio, advantages, mask, self.clip_low, self.clip_high)


def clipped_surrogate(ratio: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The pessimistic (max) of the unclipped and clipped losses per token, with clip fraction and mean ratio."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), mask).detach(),
        "ratio_mean": masked_mean(ratio.detach(), mask),
    }
    return torch.maximum(unclipped, clipped), stats
