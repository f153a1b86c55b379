"""SGPO's step grading: a step-wise judge names each wrong response's first wrong step, which becomes its RTS
(reasoning-trajectory score, the share of the response's reasoning before that step, in [0, 1])."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from rlvr.batch import RolloutBatch
from rlvr.data.steps import split_steps, token_step_spans
from rlvr.judges.base import Judge

# advantage.no_error_found: num_steps -> the step a wrong response with no error found is blamed on (None: RTS 1).
NO_ERROR_FOUND: dict[str, Callable[[int], int | None]] = {
    "last_step": lambda num_steps: num_steps - 1,
    "first_step": lambda num_steps: 0,
    "full": lambda num_steps: None,
}


def steps_rts(batch: RolloutBatch, i: int, spans: list[tuple[int, int]], error: int, start: int | None) -> float:
    """rts=steps: steps before the first wrong one over all steps, both counted after any copied guidance."""
    copied = copied_steps(batch, i, spans)
    return max(error - copied, 0) / max(len(spans) - copied, 1)


def tokens_rts(batch: RolloutBatch, i: int, spans: list[tuple[int, int]], error: int, start: int | None) -> float:
    """rts=tokens: loss tokens before the first wrong step's first token over all the response's loss tokens."""
    loss = batch.loss_mask[i].float()
    return float(loss[:start].sum() / loss.sum()) if loss.sum() > 0 else 0.0


# advantage.rts: (batch, sample, its step char spans, first wrong step, that step's first token or None) -> RTS.
RTS_UNITS = {"steps": steps_rts, "tokens": tokens_rts}


def grade(
    batch: RolloutBatch, graded: Tensor, judge: Judge, rts_of: Callable, no_error_found: Callable, needs_tokens: bool
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
        verdicts = judge([batch.examples[i] for i in to_judge], texts)
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
            error = no_error_found(num_steps)
        if error is None:
            rts[i] = 1.0
            continue
        start = None
        if needs_tokens:
            start, cut_after[i] = error_tokens(batch, i, steps[i][error])
        rts[i] = rts_of(batch, i, steps[i], error, start)
    device = batch.rewards.device
    rts_tensor = torch.tensor(rts, dtype=torch.float32, device=device)
    return rts_tensor, torch.tensor(first_error, dtype=torch.long, device=device), cut_after, verdicts, seconds


def error_tokens(batch: RolloutBatch, i: int, char_span: tuple[int, int]) -> tuple[int, int]:
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


def copied_steps(batch: RolloutBatch, i: int, spans: list[tuple[int, int]]) -> int:
    """Leading steps of response i copied from the reference as guidance that the loss does not score
    (loss_on_guidance=false): they are not the policy's reasoning, so RTS counts only the steps after them.
    With loss_on_guidance=true the copied steps are scored as the policy's own and count like any other."""
    guided = int(batch.guidance_tokens[i])
    if guided == 0 or bool(batch.loss_mask[i, :guided].any()):
        return 0
    copied_chars = len(batch.tokenizer.decode(batch.completion_ids[i, :guided].tolist(), skip_special_tokens=True))
    return sum(1 for _, end in spans if end <= copied_chars)
