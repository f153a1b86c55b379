"""SGPO (Stepwise Guided Policy Optimization, arXiv 2505.11595): colour the incorrect responses.

In a group where every response is wrong, GRPO's advantages are all zero and the group teaches
nothing. SGPO asks a step-wise judge where each wrong response first goes wrong, scores it by the
share of its reasoning before that error (RTS, reasoning-trajectory score, in [0, 1]) and turns that
into a graded reward sigmoid(beta * (RTS - gamma)), always below a correct answer's 1. Groups that
are not judged keep the base estimator's advantages exactly (GRPO's by default, `advantage.base`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.advantages.base import AdvantageEstimator, GroupBaseline, broadcast_to_tokens, group_centre, group_std
from rlvr.advantages.gpg import GPGAdvantage
from rlvr.advantages.grading import NO_ERROR_FOUND, RTS_UNITS, grade
from rlvr.advantages.grpo import GRPOAdvantage
from rlvr.advantages.opo import OPOAdvantage
from rlvr.advantages.rloo import RLOOAdvantage
from rlvr.batch import RolloutBatch
from rlvr.judges.base import Judge
from rlvr.options import check, choose

# advantage.scope: (wrong [N], in a group with no correct response [N]) -> the responses the judge grades.
SCOPES = {"all_negative": lambda wrong, all_negative: wrong & all_negative, "all_incorrect": lambda wrong, all_negative: wrong}
# advantage.base: (scale, eps) -> the per-sample estimator of every group SGPO does not judge. Only estimators
# that are a function of one reward vector per group fit: passk reads pass/fail (a shaped reward is neither) and
# reinforce_pp(_baseline) whiten over the whole batch's tokens, so they would mix the judged groups' values in.
BASES = {
    "grpo": lambda scale, eps: GRPOAdvantage(scale, eps),
    "rloo": lambda scale, eps: RLOOAdvantage(),
    "opo": lambda scale, eps: OPOAdvantage(),
    "gpg": lambda scale, eps: GPGAdvantage(),
}


class SGPOAdvantage(AdvantageEstimator):
    """The base estimator's advantages (GRPO by default), with the wrong responses of failed groups graded by
    a step-wise judge.

    base: grpo | rloo | opo | gpg, the estimator of every group SGPO does not judge (and of mixed groups with
      graded answers, on their shaped rewards; with base != grpo of every judged group, on its shaped rewards,
      batch-level factors such as gpg's alpha then taken over the shaped batch). `scale` and `normalize` are
      GRPO's options and need base=grpo.

    scope: "all_negative" judges the responses of groups with no correct response (the paper's
      setting); "all_incorrect" judges every incorrect response, so a mixed group's wrong answers are
      graded too (that group then gets the base estimator on its shaped rewards). A group counts as all-negative
      when no response in it is correct, never by zero reward std (shaped rewards make it non-zero).
    rts: "steps" = first_error / num_steps; "tokens" = loss tokens before the first wrong step over all
      of the response's loss tokens.
    normalize: how a judged all-negative group's centred shaped rewards are scaled with base=grpo: "group_std"
      divides by std + eps, "min_std" by max(std, min_std), "none" not at all. Dividing by the std blows small
      RTS gaps up to unit advantages; `sgpo/judged_std` and `sgpo/judged_max_abs_adv` show it. With another
      base (rloo, opo, gpg: none divides by a std) every judged group gets that base estimator on the shaped
      rewards instead, so judged and other groups share one scale; normalize (like scale) then needs its default.
    no_error_found: a wrong response the judge found no error in: "last_step" puts the error in its last
      step (RTS (n-1)/n), "first_step" in its first (RTS 0), "full" gives RTS 1.
    mask_after_error: zero the advantage of tokens after the first wrong step's tokens (they were
      written from an already-wrong state).
    """

    def __init__(
        self,
        judge: Judge | None,
        base: str = "grpo",
        beta: float = 5.0,
        gamma: float = 0.5,
        scope: str = "all_negative",
        rts: str = "steps",
        normalize: str = "group_std",
        min_std: float = 0.1,
        scale: str = "group",
        no_error_found: str = "last_step",
        mask_after_error: bool = False,
        eps: float = 1e-6,
    ):
        if judge is None:
            raise ValueError("SGPOAdvantage needs a step-wise judge, got none: pick one with judge=rule|llm|prm")
        self._graded = choose("advantage.scope", scope, SCOPES)
        self._rts = choose("advantage.rts", rts, RTS_UNITS)
        self._normalize = choose("advantage.normalize", normalize, {  # (centred [N], its group's std [N]) -> [N]
            "group_std": lambda centred, std: centred / (std + eps),
            "none": lambda centred, std: centred,
            "min_std": lambda centred, std: centred / std.clamp(min=min_std),
        })
        make_base = choose("advantage.base", base, BASES)
        check("advantage.eps", eps, low=0, low_open=True)  # 0 divides a constant group's 0 by 0; < 0 flips signs
        self._base: GroupBaseline = make_base(scale, eps)
        if base != "grpo" and scale != "group":
            raise ValueError(f"advantage.scale is GRPO's option: it needs advantage.base=grpo, got base={base!r} with scale={scale!r}")
        if base != "grpo" and normalize != "group_std":
            raise ValueError(
                f"advantage.normalize is GRPO's option: it needs advantage.base=grpo, got base={base!r} with normalize={normalize!r} "
                "(other bases score judged groups with the base estimator on the shaped rewards)"
            )
        self._no_error_found = choose("advantage.no_error_found", no_error_found, NO_ERROR_FOUND)
        check("advantage.beta", beta, low=0, low_open=True)
        check("advantage.gamma", gamma)
        # A wrong response must never earn a correct answer's reward, not even by float32 rounding.
        if torch.sigmoid(torch.tensor(beta * (1.0 - gamma), dtype=torch.float32)).item() >= 1.0:
            raise ValueError(
                f"beta * (1 - gamma) = {beta * (1 - gamma):g} is too large: a wrong response with RTS 1 would get "
                "reward 1.0, the same as a correct one; lower beta or raise gamma"
            )
        check("advantage.min_std", min_std, low=0, low_open=True)
        self.judge, self.beta, self.gamma = judge, beta, gamma
        self.scope, self.rts, self.normalize, self.min_std, self.scale = scope, rts, normalize, min_std, scale
        if not isinstance(mask_after_error, bool):
            raise ValueError(f"advantage.mask_after_error must be true or false, got {mask_after_error!r}")
        self.no_error_found, self.mask_after_error, self.eps, self.base = no_error_found, mask_after_error, eps, base
        self._needs_tokens = rts == "tokens" or mask_after_error

    def shaped_reward(self, rts: Tensor) -> Tensor:
        return torch.sigmoid(self.beta * (rts.double() - self.gamma)).float()

    def __call__(self, batch: RolloutBatch) -> Tensor:
        if batch.rewards is None or batch.correct is None:
            raise ValueError("SGPOAdvantage needs batch.rewards and batch.correct: score the batch with a reward first")
        if self._needs_tokens and batch.tokenizer is None:
            raise ValueError("SGPOAdvantage with rts=tokens or mask_after_error=true needs batch.tokenizer")
        rewards, correct, gids = batch.rewards.float(), batch.correct.bool(), batch.group_ids
        num_groups, device = batch.num_groups, rewards.device
        all_negative = torch.zeros(num_groups, dtype=torch.long, device=device).index_add_(0, gids, correct.long()) == 0
        graded = self._graded(~correct, all_negative[gids])

        rts, first_error, cut_after, verdicts, seconds = grade(
            batch, graded, self.judge, self._rts, self._no_error_found, self._needs_tokens
        )

        shaped = rewards.clone()
        shaped[graded] = self.shaped_reward(rts[graded])
        advantages = self._base.per_sample(rewards, batch)  # the base estimator, for every group not judged
        judged_groups = torch.zeros(num_groups, dtype=torch.bool, device=device)
        judged_groups[gids[graded]] = True
        failed = judged_groups & all_negative
        # Judged groups scored by the base estimator on their shaped rewards: mixed ones (scope all_incorrect), and
        # with a base other than grpo the all-negative ones too (grpo's are SGPO's `normalize` rule, below).
        rebased = judged_groups & ~all_negative if self.base == "grpo" else judged_groups
        if rebased.any():
            advantages = torch.where(rebased[gids], self._base.per_sample(shaped, batch), advantages)
        stds = torch.zeros(num_groups, device=device)
        if failed.any():
            centred = group_centre(shaped, gids)[0]  # exact 0 for a group of equal shaped rewards
            stds = group_std(centred, gids, num_groups)
            if self.base == "grpo":
                advantages = torch.where(failed[gids], self._normalize(centred, stds[gids]), advantages)

        token_advantages = broadcast_to_tokens(advantages, batch.loss_mask)
        if self.mask_after_error:
            for i, end in cut_after.items():
                token_advantages[i, end:] = 0.0

        batch.rts, batch.first_error_step = rts, first_error
        batch.metrics.update(sgpo_metrics(advantages, all_negative, failed, stds, rts, gids, graded, verdicts, seconds))
        return token_advantages


def sgpo_metrics(advantages, all_negative, failed, stds, rts, gids, graded, verdicts, seconds) -> dict[str, float]:
    """What SGPO did this step: how many groups failed, were coloured and graded, and how far their advantages reach."""
    num_negative = int(all_negative.sum())
    moved = (advantages != 0).long()
    nonzero = torch.zeros(len(all_negative), dtype=torch.long, device=gids.device).index_add_(0, gids, moved) > 0
    in_failed = failed[gids]
    return {
        "sgpo/all_negative_frac": num_negative / max(len(all_negative), 1),
        # 0 when there is nothing to colour or grade: a finite value every logger can average.
        "sgpo/coloured_frac": float((nonzero & all_negative).sum()) / num_negative if num_negative else 0.0,
        "sgpo/graded": float(graded.sum()),
        "sgpo/mean_rts": float(rts[graded].mean()) if graded.any() else 0.0,
        "sgpo/judged_std": float(stds[failed].mean()) if failed.any() else 0.0,
        "sgpo/judged_max_abs_adv": float(advantages[in_failed].abs().max()) if in_failed.any() else 0.0,
        "judge/seconds": seconds,
        "judge/parse_failures": float(sum(not v.parsed for v in verdicts)),
    }

