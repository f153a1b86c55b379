"""Policy loss: clipped importance ratio, KL to a reference, and how token losses become one number."""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(token) under softmax(logits / temperature); logits [N, C, V] aligned with tokens [N, C]."""
    logits = logits.float() / temperature
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1, k2, k3)."""
    log_ratio = logprobs - ref_logprobs  # log pi/pi_ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # pi_ref/pi - 1 - log(pi_ref/pi): unbiased and always >= 0. Clamped so one outlier can't overflow.
        neg = (-log_ratio).clamp(-20.0, 20.0)
        return neg.exp() - 1 - neg
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def aggregate(token_losses: Tensor, mask: Tensor, mode: str, norm_length: int | None = None) -> Tensor:
    """Reduce [N, C] token losses over the tokens in `mask`.

    token_mean: every token in the batch weighs the same (DAPO).
    seq_mean_token_mean: mean per sequence, then mean over sequences (the GRPO paper).
    seq_mean_token_sum_norm: sum per sequence divided by a constant `norm_length` (e.g. the generation
    budget), then mean over sequences (Dr. GRPO): no length bias from the normaliser.
    Sequences with no token in the mask are left out of the sequence means.
    """
    mask = mask.to(token_losses.dtype)
    if mode == "token_mean":
        return (token_losses * mask).sum() / mask.sum().clamp(min=1)
    per_seq_tokens = mask.sum(-1)
    present = per_seq_tokens > 0
    if mode == "seq_mean_token_mean":
        per_seq = (token_losses * mask).sum(-1) / per_seq_tokens.clamp(min=1)
    elif mode == "seq_mean_token_sum_norm":
        if not norm_length:
            raise ValueError("seq_mean_token_sum_norm needs norm_length (the generation budget)")
        per_seq = (token_losses * mask).sum(-1) / norm_length
    else:
        raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    return per_seq[present].sum() / present.sum().clamp(min=1)


def aggregation_weight(part_mask: Tensor, whole_mask: Tensor, mode: str) -> float:
    """Weight of a micro-batch's aggregated loss so that the weighted sum over micro-batches equals the
    loss aggregated over the whole mini-batch (gradient accumulation that changes memory, not the math)."""
    if mode == "token_mean":
        return float(part_mask.sum()) / max(float(whole_mask.sum()), 1.0)
    return float((part_mask.sum(-1) > 0).sum()) / max(float((whole_mask.sum(-1) > 0).sum()), 1.0)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    norm_length: int | None = None,
    ref_logprobs: Tensor | None = None,
    kl_beta: float = 0.0,
    kl_estimator: str = "k3",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip surrogate on token log-probs [N, C], asymmetric bounds (clip-higher), optional KL term.

    loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high)) + beta * KL_t
    """
    # Masked positions get ratio 1 before exp: garbage log-probs there must not overflow into inf * 0 = nan.
    ratio = torch.exp((logprobs - old_logprobs).masked_fill(~mask.bool(), 0.0))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    token_losses = torch.maximum(unclipped, clipped)
    maskf = mask.to(token_losses.dtype)
    n_tokens = maskf.sum().clamp(min=1)
    stats = {
        "clip_frac": ((clipped > unclipped).to(maskf.dtype) * maskf).sum().detach() / n_tokens,
        "ratio_mean": (ratio.detach() * maskf).sum() / n_tokens,
    }
    if kl_beta > 0:
        if ref_logprobs is None:
            raise ValueError("kl_beta > 0 needs reference log-probs")
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
        token_losses = token_losses + kl_beta * kl
        stats["kl"] = (kl.detach() * maskf).sum() / n_tokens
    return aggregate(token_losses, mask, aggregation, norm_length), stats
