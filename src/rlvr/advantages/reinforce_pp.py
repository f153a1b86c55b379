"""REINFORCE++ (arXiv 2501.03262): critic-free PPO-style advantages, normalised over the whole batch.

Both variants whiten over the batch's scored tokens (mean and unbiased std of every loss-mask token of
the batch this rank's estimator sees), as verl's `reinforce_plus_plus(_baseline)` and OpenRLHF do.
Whitening subtracts the batch mean, so a group whose rewards are all equal does NOT get 0: its tokens get
(group value - batch mean) / batch std. That is the method, kept here on purpose.
"""

from __future__ import annotations

from torch import Tensor

from rlvr.advantages.base import AdvantageEstimator, broadcast_to_tokens, group_centre, scored_rewards, whiten
from rlvr.batch import RolloutBatch
from rlvr.options import check


class ReinforcePPAdvantage(AdvantageEstimator):
    """A_t = whiten(G_t), G_t = gamma^(k_t) * r, k_t = the scored tokens after t: the outcome reward sits on
    the last scored token and is discounted back to the first. No baseline: with gamma = 1 every token of a
    sequence carries its reward, and only the batch whitening centres it.
    The paper (and verl / OpenRLHF with a KL-in-reward setting) also folds a per-token KL penalty to the
    reference into the reward before the return; that is not done here: use loss.kl_beta (KL in the loss).

    gamma: discount in [0, 1]. eps (> 0): added to the variance before the square root (verl: 1e-8).
    """

    def __init__(self, gamma: float = 1.0, eps: float = 1e-8):
        self.gamma = check("advantage.gamma", gamma, low=0, high=1)
        self.eps = check("advantage.eps", eps, low=0, low_open=True)

    def __call__(self, batch: RolloutBatch) -> Tensor:
        rewards, mask = scored_rewards(batch, "advantage=reinforce_pp"), batch.loss_mask.float()
        after = mask.flip(-1).cumsum(-1).flip(-1) - mask  # scored tokens after each position
        returns = rewards[:, None] * self.gamma**after * mask
        return whiten(returns, mask, self.eps)


class ReinforcePPBaselineAdvantage(AdvantageEstimator):
    """A = whiten(r_i - mean_group(r)) over the batch's scored tokens (REINFORCE++-baseline): the group mean
    removes the prompt's difficulty, the batch whitening sets the scale. An all-equal group is NOT 0 after the
    whitening: its tokens get (0 - batch token mean) / batch std. eps (> 0) as in `ReinforcePPAdvantage`."""

    def __init__(self, eps: float = 1e-8):
        self.eps = check("advantage.eps", eps, low=0, low_open=True)

    def __call__(self, batch: RolloutBatch) -> Tensor:
        rewards, mask = scored_rewards(batch, "advantage=reinforce_pp_baseline"), batch.loss_mask.float()
        centred = group_centre(rewards, batch.group_ids)[0]
        return whiten(broadcast_to_tokens(centred, mask), mask, self.eps)
