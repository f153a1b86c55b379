"""Clip-Cov and KL-Cov (arXiv 2505.22617, "The Entropy Mechanism of RL for Reasoning LMs").

Entropy collapses because of the few tokens whose log-prob and advantage covary most: raising an already
likely token with a positive advantage. Both losses find them by the centred product
cov_t = (A_t - mean A) * (log pi(y_t) - mean log pi), means over the scored tokens of the batch the loss is
called on (the micro-batch, as in verl, so the selection depends on the micro-batch split), and treat only
those tokens differently. Written after verl's `clip_cov` / `kl_cov`, which follow the paper's code.
The "at least one token" budget is per micro-batch, so with a split the effective share grows with the number
of micro-batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.losses.base import PolicyLoss, masked_ratio
from rlvr.losses.ppo_clip import clipped_surrogate
from rlvr.options import check
from rlvr.tensors import masked_mean


def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """[N, C] detached cov_t on the scored tokens, -inf elsewhere (never selected)."""
    logprobs = logprobs.detach()
    cov = (advantages - masked_mean(advantages, mask)) * (logprobs - masked_mean(logprobs.masked_fill(~mask.bool(), 0.0), mask))
    return cov.masked_fill(~mask.bool(), float("-inf"))


class ClipCovLoss(PolicyLoss):
    """PPO-clip, and on a random clip_cov_ratio share (at least one token) of the scored tokens that PPO did not
    clip and whose cov_t lies in (clip_cov_lb, clip_cov_ub), no loss and no gradient at all.

    The tokens are drawn with the global torch RNG (torch.randperm), as verl does. Kept on purpose: the global
    RNG state is what exact resume captures and restores, so a resumed run draws the same tokens; a private
    generator would need its own state in the checkpoint. The draw does advance the global stream, so
    clip_cov shifts later random draws (e.g. the roll-outs) relative to another loss with the same seed."""

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.2, clip_cov_ratio: float = 2e-4,
                 clip_cov_lb: float = 1.0, clip_cov_ub: float = 5.0, **options):
        super().__init__(**options)
        self.clip_low = check("loss.clip_low", clip_low, low=0, high=1, high_open=True)
        self.clip_high = check("loss.clip_high", clip_high, low=0)
        self.clip_cov_ratio = check("loss.clip_cov_ratio", clip_cov_ratio, low=0, high=1, low_open=True)
        self.clip_cov_lb = check("loss.clip_cov_lb", clip_cov_lb)
        self.clip_cov_ub = check("loss.clip_cov_ub", clip_cov_ub, low=clip_cov_lb, low_open=True)

    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ratio = masked_ratio(logprobs, old_logprobs, mask)
        losses, stats = clipped_surrogate(ratio, advantages, mask, self.clip_low, self.clip_high)
        ppo_clipped = -advantages * ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high) > -advantages * ratio
        cov = token_covariance(logprobs, advantages, mask)
        candidates = ((cov > self.clip_cov_lb) & (cov < self.clip_cov_ub) & ~ppo_clipped).flatten().nonzero().flatten()
        budget = max(int(self.clip_cov_ratio * float(mask.sum())), 1)
        chosen = candidates[torch.randperm(len(candidates), device=candidates.device)[:budget]]
        keep = torch.ones(losses.numel(), dtype=losses.dtype, device=losses.device).index_fill_(0, chosen, 0.0).view_as(losses)
        stats["cov_clip_frac"] = masked_mean(1.0 - keep, mask).detach()
        return losses * keep, stats


class KLCovLoss(PolicyLoss):
    """No clip: loss_t = -A_t r_t, plus kl_cov_coef * |log r_t| on the kl_cov_ratio share (at least one token)
    of scored tokens with the largest cov_t (verl's `ppo_kl_coef`, 1.0)."""

    def __init__(self, kl_cov_ratio: float = 2e-4, kl_cov_coef: float = 1.0, **options):
        super().__init__(**options)
        self.kl_cov_ratio = check("loss.kl_cov_ratio", kl_cov_ratio, low=0, high=1, low_open=True)
        self.kl_cov_coef = check("loss.kl_cov_coef", kl_cov_coef, low=0)

    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = (logprobs - old_logprobs).masked_fill(~mask.bool(), 0.0)
        ratio = log_ratio.exp()
        losses = -advantages * ratio
        scored = int(mask.sum())
        penalised = torch.zeros(losses.numel(), dtype=torch.bool, device=losses.device)
        if scored:
            top = token_covariance(logprobs, advantages, mask).flatten().topk(max(int(scored * self.kl_cov_ratio), 1)).indices
            penalised[top] = True
        penalised = penalised.view_as(losses)
        losses = torch.where(penalised, losses + self.kl_cov_coef * log_ratio.abs(), losses)
        stats = {"ratio_mean": masked_mean(ratio.detach(), mask), "cov_kl_frac": masked_mean(penalised.to(ratio.dtype), mask).detach()}
        return losses, stats
