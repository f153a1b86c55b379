"""Checks every run makes on its problems before any model loads: every reference answer through the reward's own
check (unsolvable rows), empty questions, duplicates, prompt length (against the data's limit and the model's
context), train/validation overlap, and reference steps for guidance."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rlvr.batch import Example
from rlvr.options import check, choose

log = logging.getLogger(__name__)


def prompt_limits(max_prompt_tokens: int | None, long_prompts: str) -> tuple[int | None, bool]:
    """A data set's `max_prompt_tokens` and whether prompts over it are skipped (long_prompts: error | skip)."""
    check("data.max_prompt_tokens", max_prompt_tokens, integer=True, low=1, optional=True)
    return max_prompt_tokens, choose("data.long_prompts", long_prompts, {"error": False, "skip": True})


SHOWN_ROWS = 5  # rows named in a message about bad rows


def bad_answers_policy(bad_answers: str) -> bool:
    """Whether rows no reward could score right are skipped (data.bad_answers: error | skip)."""
    return choose("data.bad_answers", bad_answers, {"error": False, "skip": True})


def checked_splits(data: Any, encode: Callable[[list[Example]], list[list[int]]], guidance: Any = None, reward: Any = None,
                   context_length: int | None = None, max_new_tokens: int = 0, tokenizer: Any = None) -> tuple[list[Example], list[Example]]:
    """data.train() and data.val() as the model will see them (`encode`).

    Unsolvable rows (an empty question, a reference answer `reward.check_references` refuses, a question repeated
    with an answer that disagrees: see _same_answer) are an error naming them, or skipped with a count and the first ids
    (data.bad_answers=skip); repeated questions with the same answer are counted in a warning. Prompts over
    data.max_prompt_tokens, or over the model's `context_length` less the `max_new_tokens` generated after them,
    are an error naming the longest, or skipped with a count (data.long_prompts=skip); problems in both splits
    are counted in a warning (validation accuracy would overstate what was learnt); a guidance schedule on
    problems without reference steps is an error (none has any) or a warning (some lack them). With such a schedule
    and a `tokenizer`, a training prompt, its whole reference solution (the bound of any guided prefix) and
    `max_new_tokens` must fit the context too (the same error or skip)."""
    train, val = (_solvable(examples, split, data, reward) for examples, split in ((data.train(), "training"), (data.val(), "validation")))
    if getattr(guidance, "needs_reference_steps", False):
        unguidable = sum(not e.steps for e in train)
        if unguidable == len(train):
            raise ValueError(f"guidance={type(guidance).__name__} needs reference steps, and no training problem of "
                             f"{getattr(data, 'name', type(data).__name__)} has any: use guidance=none")
        if unguidable:
            log.warning("%d of %d training problems have no reference steps: they are never guided", unguidable, len(train))
    overlap = len({e.prompt for e in train} & {e.prompt for e in val})
    if overlap:
        log.warning("%d training problems are also validation problems: val/accuracy overstates generalisation", overlap)
    limit = _prompt_limit(data, context_length, max_new_tokens)
    train, val = _within_limit(train, "training", data, encode, *limit), _within_limit(val, "validation", data, encode, *limit)
    if getattr(guidance, "needs_reference_steps", False) and tokenizer is not None and context_length is not None and train:
        # A guided roll-out is the prompt, then reference steps, then up to max_new_tokens generated.
        solutions = [len(tokenizer(e.solution, add_special_tokens=False)["input_ids"]) if e.steps else 0 for e in train]
        train = _within_limit(train, "guided training", data, lambda rows: [[0] * (len(ids) + n) for ids, n in zip(encode(rows), solutions)],
                              context_length - max_new_tokens,
                              f"{context_length - max_new_tokens} tokens with their reference solution (the longest guidance "
                              f"prefix), the model's context of {context_length} less rollout.max_new_tokens={max_new_tokens}",
                              "use a model with a longer context, lower rollout.max_new_tokens or use guidance=none")
    return train, val


def checked_examples(examples: list[Example], split: str, data: Any, encode: Callable[[list[Example]], list[list[int]]],
                     reward: Any = None, context_length: int | None = None, max_new_tokens: int = 0) -> list[Example]:
    """The row checks of checked_splits on one list of problems (e.g. the ones rlvr.evaluate scores), with the same
    options: bad rows and prompts too long are an error, or skipped (data.bad_answers / data.long_prompts=skip)."""
    return _within_limit(_solvable(examples, split, data, reward), split, data, encode, *_prompt_limit(data, context_length, max_new_tokens))


def _solvable(examples: list[Example], split: str, data: Any, reward: Any) -> list[Example]:
    """`examples` less the rows no completion could be scored right on (see checked_splits); duplicates counted."""
    reasons: dict[int, str] = {i: "the question is empty" for i, e in enumerate(examples) if not e.prompt.strip()}
    if reward is not None:
        rest = [i for i in range(len(examples)) if i not in reasons]
        verdicts = reward.check_references([examples[i] for i in rest])
        reasons.update((i, why) for i, why in zip(rest, verdicts, strict=True) if why is not None)
    first: dict[str, int] = {}
    repeats = conflicts = 0
    for i, e in enumerate(examples):
        if i in reasons:
            continue
        seen = first.setdefault(e.prompt, i)
        if seen != i:
            repeats += 1
            if not _same_answer(examples[seen], e, reward):
                conflicts += 1
                reasons[i] = f"the same question as {examples[seen].id!r}, whose answer is {examples[seen].answer[:100]!r}"
    if repeats:
        # Kept: a repeat with the same answer is still a fair problem (it only weighs double), and real sets have none.
        log.warning("%d %s problems repeat an earlier question of the split (they are kept; %d of them with a different "
                    "answer are bad rows)", repeats, split, conflicts)
    if not reasons:
        return examples
    bad = sorted(reasons)
    named = "; ".join(f"{examples[i].id!r} (answer {examples[i].answer[:80]!r}): {reasons[i]}" for i in bad[:SHOWN_ROWS])
    what = (f"{len(bad)} of {len(examples)} {split} problems of {getattr(data, 'name', type(data).__name__)} cannot be scored right"
            f"{'' if reward is None else f' by {type(reward).__name__}'}")
    kept = [e for i, e in enumerate(examples) if i not in reasons]
    if not getattr(data, "skip_bad_answers", False) or not kept:
        named += "" if kept else "; that is all of them"
        raise ValueError(f"{what}: {named}{' ...' if len(bad) > SHOWN_ROWS else ''}. Fix the data, or set data.bad_answers=skip to leave them out")
    log.warning("%s: skipped (data.bad_answers=skip); the first: %s", what, named)
    return kept


def _same_answer(first: Example, repeat: Example, reward: Any) -> bool:
    """Whether a repeated question's answer agrees with its first row's. Rows with tests (code) are never compared:
    two programs can both be right. Otherwise equal text agrees, and different text agrees when the reward scores a
    completion giving the first row's answer right on the repeat (`\\frac{1}{2}` and `0.5`)."""
    if first.meta.get("tests") is not None or repeat.meta.get("tests") is not None or first.answer.strip() == repeat.answer.strip():
        return True
    completion = None if reward is None else reward.answer_completion(first.answer)
    return completion is not None and reward.score(completion, repeat).correct


def _prompt_limit(data: Any, context_length: int | None, max_new_tokens: int) -> tuple[int | None, str, str]:
    """The longest prompt allowed, what sets it, and how to raise it (for messages)."""
    limit = getattr(data, "max_prompt_tokens", None)
    if context_length is None:
        return limit, f"data.max_prompt_tokens={limit}", "raise the limit"
    room = context_length - max_new_tokens
    if room < 1:
        raise ValueError(f"rollout.max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
                         f"{context_length} tokens: lower rollout.max_new_tokens")
    if limit is not None and limit <= room:
        return limit, f"data.max_prompt_tokens={limit}", "raise the limit"
    return (room, f"{room} tokens, the model's context of {context_length} less rollout.max_new_tokens={max_new_tokens}",
            "use a model with a longer context or lower rollout.max_new_tokens")


def _within_limit(examples: list[Example], split: str, data: Any, encode: Callable, limit: int | None, named: str, fix: str) -> list[Example]:
    if limit is None or not examples:
        return examples
    lengths = [len(ids) for ids in encode(examples)]
    kept = [e for e, n in zip(examples, lengths) if n <= limit]
    if len(kept) == len(examples):
        return examples
    longest = max(range(len(examples)), key=lengths.__getitem__)
    too_long = f"{len(examples) - len(kept)} {split} prompts are longer than {named}"
    if not data.skip_long_prompts or not kept:
        raise ValueError(
            f"{too_long} (the longest, {examples[longest].id!r}, has {lengths[longest]} tokens){'' if kept else ', all of them'}: "
            f"{fix}, or set data.long_prompts=skip to leave them out"
        )
    log.warning("%s: skipped (data.long_prompts=skip)", too_long)
    return kept
