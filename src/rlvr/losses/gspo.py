"""GSPO (Group Sequence Policy Optimization, arXiv 2507.18071): one importance ratio per sequence.

s_i = (pi(y_i) / pi_old(y_i)) ^ (1/|y_i|) = exp(mean_t log r_t), clipped at the sequence level; the
objective is mean_i min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i).
Written per token ("GSPO-token"): token t carries s_i as its ratio value, with gradient s_i * grad log pi(y_t),
so with one advantage per sequence and `seq_mean_token_mean` aggregation the gradient is the paper's.
Per-token advantages (e.g. SGPO's mask_after_error) then weigh each token's share of that gradient.
"""

from __future__ import annotations

from torch import Tensor

from rlvr.losses.base import PolicyLoss
from rlvr.losses.ppo_clip import clipped_surrogate
from rlvr.options import check
from rlvr.tensors import masked_mean


class GSPOLoss(PolicyLoss):
    """Sequence-level clipped ratio. The paper's clip range is tiny (3e-4 / 4e-4): the ratio is a geometric
    mean over the whole response, so it moves far less than a token ratio."""

    def __init__(self, clip_low: float = 3e-4, clip_high: float = 4e-4, aggregation: str = "seq_mean_token_mean", **options):
        super().__init__(aggregation=aggregation, **options)
        self.clip_low = check("loss.clip_low", clip_low, low=0, high=1, high_open=True)
        self.clip_high = check("loss.clip_high", clip_high, low=0)

    def token_losses(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = (logprobs - old_logprobs).masked_fill(~mask.bool(), 0.0)
        sequence_log_ratio = masked_mean(log_ratio, mask, dim=-1)  # log s_i
        # Value s_i on every token; gradient through each token's own log-prob only.
        token_log_ratio = logprobs - logprobs.detach() + sequence_log_ratio.detach()[:, None]
        ratio = token_log_ratio.clamp(max=10.0).masked_fill(~mask.bool(), 0.0).exp()
        return clipped_surrogate(ratio, advantages, mask, self.clip_low, self.clip_high)
