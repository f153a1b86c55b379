"""SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347): a smooth, temperature-gated trust region.

loss_t = -f(r_t) A_t, f(r) = sigmoid(tau (r - 1)) * 4 / tau, tau = tau_pos if A_t > 0 else tau_neg.
d f(r) / d log pi = r * 4 sigmoid'(tau (r - 1)) is 1 at r = 1 (on-policy it is the plain policy gradient)
and fades smoothly as r leaves 1, instead of stopping at a hard clip.
A larger tau_neg makes negative-advantage tokens fade faster (the paper: they destabilise more).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.losses.base import PolicyLoss
from rlvr.options import check
from rlvr.tensors import masked_mean


class SAPOLoss(PolicyLoss):
    """tau_pos, tau_neg > 0: the gate's temperatures for A > 0 and A <= 0 (verl / TRL defaults 1.0 / 1.05).
    verl always aggregates SAPO with seq_mean_token_mean; here that is the YAML's default, and any
    aggregation may be chosen."""

    def __init__(self, tau_pos: float = 1.0, tau_neg: float = 1.05, aggregation: str = "seq_mean_token_mean", **options):
        super().__init__(aggregation=aggregation, **options)
        self.tau_pos = check("loss.tau_pos", tau_pos, low=0, low_open=True)
        self.tau_neg = check("loss.tau_neg", tau_neg, low=0, low_open=True)

    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        # log-ratio clamped as verl does: exp(inf) would turn the gate's zero gradient into nan
        ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0).masked_fill(~mask.bool(), 0.0).exp()
        tau = torch.where(advantages > 0, self.tau_pos, self.tau_neg)
        gate = torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau
        return -gate * advantages, {"ratio_mean": masked_mean(ratio.detach(), mask)}
