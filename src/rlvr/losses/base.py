"""What every policy loss shares: how token losses become one number, and the KL penalty to a reference.

A loss plugin subclasses `PolicyLoss` and writes `token_losses`; the options are resolved once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from rlvr.options import check, choose
from rlvr.tensors import masked_mean


class TokenMean:
    """Every scored token in the batch weighs the same (DAPO)."""

    def __call__(self, token_losses: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(token_losses, mask)

    def weight(self, part_mask: Tensor, whole_mask: Tensor) -> float:
        return float(part_mask.sum()) / max(float(whole_mask.sum()), 1.0)


class SeqMeanTokenMean:
    """Mean over each sequence's tokens, then over the sequences (the GRPO paper).
    Sequences with no scored token are left out of the mean over sequences."""

    def per_sequence(self, token_losses: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(token_losses, mask, dim=-1)

    def __call__(self, token_losses: Tensor, mask: Tensor) -> Tensor:
        present = mask.sum(-1) > 0
        return self.per_sequence(token_losses, mask)[present].sum() / present.sum().clamp(min=1)

    def weight(self, part_mask: Tensor, whole_mask: Tensor) -> float:
        return float((part_mask.sum(-1) > 0).sum()) / max(float((whole_mask.sum(-1) > 0).sum()), 1.0)


class SeqMeanTokenSumNorm(SeqMeanTokenMean):
    """Sum over each sequence's tokens divided by a constant (the generation budget), then the mean over
    sequences (Dr. GRPO): the normaliser does not depend on the length, so there is no length bias."""

    def __init__(self, norm_length: int):
        self.norm_length = check("loss.norm_length", norm_length, integer=True, low=1)

    def per_sequence(self, token_losses: Tensor, mask: Tensor) -> Tensor:
        return (token_losses * mask.to(token_losses.dtype)).sum(-1) / self.norm_length


def kl_k1(log_ratio: Tensor) -> Tensor:
    return log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio**2


def kl_k3(log_ratio: Tensor) -> Tensor:
    # pi_ref/pi - 1 - log(pi_ref/pi): unbiased and always >= 0. Clamped so one outlier can't overflow.
    neg = (-log_ratio).clamp(-20.0, 20.0)
    return neg.exp() - 1 - neg


# Schulman's estimators of KL(pi || pi_ref) from samples of pi, as functions of log pi/pi_ref.
KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def make_aggregation(name: str, norm_length: int | None = None):
    """The aggregation object `name` stands for (`loss.aggregation`)."""
    build = choose("loss.aggregation", name, {
        "token_mean": TokenMean,
        "seq_mean_token_mean": SeqMeanTokenMean,
        "seq_mean_token_sum_norm": lambda: SeqMeanTokenSumNorm(norm_length),
    })
    return build()


class PolicyLoss(ABC):
    """loss = aggregate(token_losses + kl_beta * KL_t) over the scored tokens.

    aggregation: token_mean | seq_mean_token_mean | seq_mean_token_sum_norm (needs `norm_length`).
    kl_beta: weight of the KL penalty to the frozen reference (0: no reference model is loaded).
    kl_estimator: k1 | k2 | k3.
    top_entropy_quantile: rho in [0, 1]; below 1 only the scored tokens in the top rho of the policy's entropy
      carry the policy term (arXiv 2506.01939; TRL's option of the same name). rlvr takes the quantile per rank,
      over the scored tokens of the batch the loss is called on (the micro-batch), so it depends on the
      micro-batch split and the number of ranks; TRL gathers the entropies across processes first. The dropped
      tokens still count in the aggregation's denominator and still carry the KL term, as in TRL.
    """

    def __init__(
        self, aggregation: str = "token_mean", norm_length: int | None = None, kl_beta: float = 0.0, kl_estimator: str = "k3",
        top_entropy_quantile: float = 1.0,
    ):
        check("loss.norm_length", norm_length, integer=True, low=1, optional=True)
        self.aggregate = make_aggregation(aggregation, norm_length)
        self.kl_beta = check("loss.kl_beta", kl_beta, low=0)
        self.kl = choose("loss.kl_estimator", kl_estimator, KL_ESTIMATORS)
        self.top_entropy_quantile = check("loss.top_entropy_quantile", top_entropy_quantile, low=0, high=1)

    @property
    def needs_reference(self) -> bool:
        return self.kl_beta > 0

    @abstractmethod
    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """[N, C] per-token losses (their aggregate is minimised) and detached statistics."""

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, ref_logprobs: Tensor | None = None,
        entropy: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Token log-probs, old log-probs, advantages and the loss mask, all [N, C]; `entropy` is the policy's
        detached per-token entropy [N, C] (needed when `top_entropy_quantile` < 1)."""
        losses, stats = self.token_losses(logprobs, old_logprobs, advantages, mask)
        if self.top_entropy_quantile < 1:
            if entropy is None:
                raise ValueError("loss.top_entropy_quantile < 1 needs the policy's per-token entropy")
            keep = high_entropy_tokens(entropy, mask, self.top_entropy_quantile)
            losses = losses * keep
            stats["entropy_kept_frac"] = masked_mean(keep.to(losses.dtype), mask).detach()
        if self.kl_beta > 0:
            if ref_logprobs is None:
                raise ValueError("loss.kl_beta > 0 needs reference log-probs")
            kl = self.kl(logprobs - ref_logprobs)
            losses = losses + self.kl_beta * kl
            stats["kl"] = masked_mean(kl.detach(), mask)
        return self.aggregate(losses, mask), stats

    def micro_batch_weight(self, part_mask: Tensor, whole_mask: Tensor) -> float:
        """Weight of a micro-batch's loss so that the weighted sum over micro-batches equals the loss of the
        whole mini-batch (gradient accumulation changes memory, not the math)."""
        return self.aggregate.weight(part_mask, whole_mask)


def high_entropy_tokens(entropy: Tensor, mask: Tensor, rho: float) -> Tensor:
    """[N, C] bool: the scored tokens whose entropy is at least the (1 - rho) quantile of the scored tokens'
    entropies; rho = 0 keeps only the highest-entropy token(s)."""
    scored = mask.bool()
    if not scored.any():
        return scored
    threshold = linear_quantile(entropy[scored].float(), 1.0 - rho)
    return scored & (entropy.float() >= threshold)


def linear_quantile(values: Tensor, q: float) -> Tensor:
    """The q quantile of 1-D `values` with linear interpolation between the two order statistics around
    position q * (n - 1), torch.quantile's default rule. By a sort: torch.quantile refuses inputs above 2^24
    elements, and a large micro-batch has that many tokens."""
    ordered = values.sort().values
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return torch.lerp(ordered[low], ordered[high], position - low)


def masked_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """exp(logprobs - old) with ratio 1 on unscored positions: garbage log-probs there must not overflow
    into inf * 0 = nan."""
    return torch.exp((logprobs - old_logprobs).masked_fill(~mask.bool(), 0.0))
