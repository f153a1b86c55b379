"""SGPO (Stepwise Guided Policy Optimization, arXiv 2505.11595): colour the incorrect responses.

In a group where every response is wrong, GRPO's advantages are all zero and the group teaches
nothing. SGPO asks a step-wise judge where each wrong response first goes wrong, scores it by the
share of its reasoning before that error (RTS, reasoning-trajectory score, in [0, 1]) and turns that
into a graded reward sigmoid(beta * (RTS - gamma)), always below a correct answer's 1. Groups that
are not judged keep GRPO's advantages exactly.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from rlvr.advantages.base import AdvantageEstimator, broadcast_to_tokens, group_normalize, group_std
from rlvr.batch import RolloutBatch
from rlvr.data.steps import split_steps, token_step_spans
from rlvr.judges.base import Judge

SCOPES = ("all_negative", "all_incorrect")
RTS_UNITS = ("steps", "tokens")
NORMALIZE = ("group_std", "none", "min_std")
NO_ERROR_FOUND = ("last_step", "first_step", "full")


class SGPOAdvantage(AdvantageEstimator):
    """GRPO advantages, with the wrong responses of failed groups graded by a step-wise judge.

    scope: "all_negative" judges the responses of groups with no correct response (the paper's
      setting); "all_incorrect" judges every incorrect response, so a mixed group's wrong answers are
      graded too (that group is then normalised with `scale`, like GRPO). A group counts as all-negative
      when no response in it is correct, never by zero reward std (shaped rewards make it non-zero).
    rts: "steps" = first_error / num_steps; "tokens" = loss tokens before the first wrong step over all
      of the response's loss tokens.
    normalize: how a judged all-negative group's centred shaped rewards are scaled: "group_std" divides
      by std + eps, "min_std" by max(std, min_std), "none" not at all. Dividing by the std blows small
      RTS gaps up to unit advantages; `sgpo/judged_std` and `sgpo/judged_max_abs_adv` show it.
    no_error_found: a wrong response the judge found no error in: "last_step" puts the error in its last
      step (RTS (n-1)/n), "first_step" in its first (RTS 0), "full" gives RTS 1.
    mask_after_error: zero the advantage of tokens after the first wrong step's tokens (they were
      written from an already-wrong state).
    """

    def __init__(
        self,
        judge: Judge | None,
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
        for name, value, allowed in (
            ("scope", scope, SCOPES),
            ("rts", rts, RTS_UNITS),
            ("normalize", normalize, NORMALIZE),
            ("scale", scale, ("group", "batch", "none")),
            ("no_error_found", no_error_found, NO_ERROR_FOUND),
        ):
            if value not in allowed:
                raise ValueError(f"advantage.{name} must be one of {' | '.join(allowed)}, got {value!r}")
        if not (math.isfinite(beta) and beta > 0 and math.isfinite(gamma)):
            raise ValueError(f"advantage.beta must be finite and > 0 and gamma finite, got beta={beta}, gamma={gamma}")
        # A wrong response must never earn a correct answer's reward, not even by float32 rounding.
        if torch.sigmoid(torch.tensor(beta * (1.0 - gamma), dtype=torch.float32)).item() >= 1.0:
            raise ValueError(
                f"beta * (1 - gamma) = {beta * (1 - gamma):g} is too large: a wrong response with RTS 1 would get "
                "reward 1.0, the same as a correct one; lower beta or raise gamma"
            )
        if min_std <= 0 or eps < 0:
            raise ValueError(f"advantage.min_std must be > 0 and eps >= 0, got {min_std}, {eps}")
        self.judge, self.beta, self.gamma = judge, beta, gamma
        self.scope, self.rts, self.normalize, self.min_std, self.scale = scope, rts, normalize, min_std, scale
        self.no_error_found, self.mask_after_error, self.eps = no_error_found, mask_after_error, eps

    def shaped_reward(self, rts: Tensor) -> Tensor:
        return torch.sigmoid(self.beta * (rts.double() - self.gamma)).float()

    def __call__(self, batch: RolloutBatch) -> Tensor:
        if batch.rewards is None or batch.correct is None:
            raise ValueError("SGPOAdvantage needs batch.rewards and batch.correct: score the batch with a reward first")
        needs_tokens = self.rts == "tokens" or self.mask_after_error
        if needs_tokens and batch.tokenizer is None:
            raise ValueError("SGPOAdvantage with rts=tokens or mask_after_error=true needs batch.tokenizer")
        rewards, correct, gids = batch.rewards.float(), batch.correct.bool(), batch.group_ids
        num_groups, device = batch.num_groups, rewards.device
        all_negative = torch.zeros(num_groups, dtype=torch.long, device=device).index_add_(0, gids, correct.long()) == 0
        graded = ~correct if self.scope == "all_incorrect" else ~correct & all_negative[gids]

        rts, first_error, cut_after, verdicts, seconds = self._grade(batch, graded, needs_tokens)

        shaped = rewards.clone()
        shaped[graded] = self.shaped_reward(rts[graded])
        advantages = group_normalize(rewards, gids, self.scale, self.eps)  # GRPO, for every group not judged
        judged_groups = torch.zeros(num_groups, dtype=torch.bool, device=device)
        judged_groups[gids[graded]] = True
        mixed = judged_groups & ~all_negative
        if mixed.any():  # scope all_incorrect: a mixed group with graded wrong answers, normalised as GRPO does
            advantages = torch.where(mixed[gids], group_normalize(shaped, gids, self.scale, self.eps), advantages)
        failed = judged_groups & all_negative
        stds = torch.zeros(num_groups, device=device)
        if failed.any():
            centred = group_normalize(shaped, gids, "none")  # exact 0 for a group of equal shaped rewards
            stds = group_std(centred, gids, num_groups)
            if self.normalize == "group_std":
                scaled = centred / (stds[gids] + self.eps)
            elif self.normalize == "min_std":
                scaled = centred / stds[gids].clamp(min=self.min_std)
            else:
                scaled = centred
            advantages = torch.where(failed[gids], scaled, advantages)

        token_advantages = broadcast_to_tokens(advantages, batch.loss_mask)
        if self.mask_after_error:
            for i, end in cut_after.items():
                token_advantages[i, end:] = 0.0

        batch.rts, batch.first_error_step = rts, first_error
        batch.metrics.update(self._metrics(advantages, all_negative, failed, stds, rts, gids, graded, verdicts, seconds))
        return token_advantages

    def _grade(
        self, batch: RolloutBatch, graded: Tensor, needs_tokens: bool
    ) -> tuple[Tensor, Tensor, dict[int, int], list, float]:
        """RTS [N] (nan where not graded), first wrong step [N] (-1: none / not judged), the first token after
        each graded response's wrong step, the verdicts and the judge's wall time."""
        # Steps of every response to grade; the non-empty ones go to the judge in one batched call.
        steps = {}
        for i in graded.nonzero().flatten().tolist():
            example = batch.examples[i]
            steps[i] = split_steps(batch.completion_texts[i], example.step_style, example.step_separator)
        to_judge = [i for i, spans in steps.items() if spans]
        started = time.perf_counter()
        verdicts = []
        if to_judge:
            texts = [[batch.completion_texts[i][s:e] for s, e in steps[i]] for i in to_judge]
            verdicts = self.judge([batch.examples[i] for i in to_judge], texts)
        seconds = time.perf_counter() - started

        rts = [float("nan")] * batch.num_samples
        first_error = [-1] * batch.num_samples
        cut_after: dict[int, int] = {}  # sample -> first token index after its first wrong step
        for i in steps:
            rts[i] = 0.0  # every graded response starts at 0; an empty one stays there
        for i, verdict in zip(to_judge, verdicts):
            num_steps = len(steps[i])
            if verdict.first_error is not None:
                error = min(max(int(verdict.first_error), 0), num_steps - 1)  # a judge's index past the end: last step
                first_error[i] = error
            else:
                error = {"last_step": num_steps - 1, "first_step": 0, "full": None}[self.no_error_found]
            if error is None:
                rts[i] = 1.0
                continue
            if needs_tokens:
                start, cut_after[i] = self._error_tokens(batch, i, steps[i][error])
            if self.rts == "steps":
                copied = _copied_steps(batch, i, steps[i])
                rts[i] = max(error - copied, 0) / max(num_steps - copied, 1)
            else:
                loss = batch.loss_mask[i].float()
                rts[i] = float(loss[:start].sum() / loss.sum()) if loss.sum() > 0 else 0.0
        device = batch.rewards.device
        rts_tensor = torch.tensor(rts, dtype=torch.float32, device=device)
        return rts_tensor, torch.tensor(first_error, dtype=torch.long, device=device), cut_after, verdicts, seconds

    def _error_tokens(self, batch: RolloutBatch, i: int, char_span: tuple[int, int]) -> tuple[int, int]:
        """Token span [start, end) in completion_ids[i] of a step given as a char span of completion_texts[i]."""
        ids = batch.completion_ids[i][batch.token_mask[i].bool()].tolist()
        text = batch.completion_texts[i]
        decoded = batch.tokenizer.decode(ids, skip_special_tokens=True)
        offset = decoded.find(text)  # completion_texts may be the decoded text, stripped
        if offset < 0:
            raise ValueError(
                f"sample {i}: completion_texts[{i}] is not part of the decoded completion_ids "
                f"({text[:80]!r} vs {decoded[:80]!r}); token spans of steps need the text the ids decode to"
            )
        ((start, end),) = token_step_spans(ids, batch.tokenizer, [(char_span[0] + offset, char_span[1] + offset)])
        return start, end

    @staticmethod
    def _metrics(advantages, all_negative, failed, stds, rts, gids, graded, verdicts, seconds) -> dict[str, float]:
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


def _copied_steps(batch: RolloutBatch, i: int, spans: list[tuple[int, int]]) -> int:
    """Leading steps of response i copied from the reference as guidance that the loss does not score
    (loss_on_guidance=false): they are not the policy's reasoning, so RTS counts only the steps after them.
    With loss_on_guidance=true the copied steps are scored as the policy's own and count like any other."""
    guided = int(batch.guidance_tokens[i])
    if guided == 0 or bool(batch.loss_mask[i, :guided].any()):
        return 0
    copied_chars = len(batch.tokenizer.decode(batch.completion_ids[i, :guided].tolist(), skip_special_tokens=True))
    return sum(1 for _, end in spans if end <= copied_chars)
