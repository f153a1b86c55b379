"""Checks every run makes on its problems before training: prompt length, and train/validation overlap."""

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


def checked_splits(data: Any, encode: Callable[[list[Example]], list[list[int]]], guidance: Any = None) -> tuple[list[Example], list[Example]]:
    """data.train() and data.val() as the model will see them (`encode`): prompts over data.max_prompt_tokens
    are an error naming the longest, or skipped with a count (data.long_prompts=skip); problems in both splits
    are counted in a warning (validation accuracy would overstate what was learnt); a guidance schedule on
    problems without reference steps is an error (none has any) or a warning (some lack them)."""
    train, val = data.train(), data.val()
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
    return _within_limit(train, "training", data, encode), _within_limit(val, "validation", data, encode)


def _within_limit(examples: list[Example], split: str, data: Any, encode: Callable) -> list[Example]:
    limit = getattr(data, "max_prompt_tokens", None)
    if limit is None or not examples:
        return examples
    lengths = [len(ids) for ids in encode(examples)]
    kept = [e for e, n in zip(examples, lengths) if n <= limit]
    if len(kept) == len(examples):
        return examples
    longest = max(range(len(examples)), key=lengths.__getitem__)
    too_long = f"{len(examples) - len(kept)} {split} prompts are longer than data.max_prompt_tokens={limit}"
    if not data.skip_long_prompts or not kept:
        raise ValueError(
            f"{too_long} (the longest, {examples[longest].id!r}, has {lengths[longest]} tokens){'' if kept else ', all of them'}: "
            "raise the limit, or set data.long_prompts=skip to leave them out"
        )
    log.warning("%s: skipped (data.long_prompts=skip)", too_long)
    return kept
