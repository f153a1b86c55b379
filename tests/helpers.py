"""Small builders shared by the tests: hand-made roll-out batches on arithmetic examples."""

from __future__ import annotations

import torch

from rlvr.batch import RolloutBatch, build_rollout_batch
from rlvr.data.arithmetic import make_example
from rlvr.guidance.base import GuidancePlan
from rlvr.models.tiny import build_char_tokenizer
from rlvr.rollout.base import Generation

TOKENIZER = build_char_tokenizer("0123456789+=;#")


def encode(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def make_batch(
    completions: list[list[str]],
    terms: list[list[int]] | None = None,
    prefixes: list[list[str]] | None = None,
    finished: list[list[bool]] | None = None,
    max_new_tokens: int = 64,
    loss_on_guidance: bool = True,
    mask_truncated: bool = False,
) -> RolloutBatch:
    """completions[g][i]: text of sample i of group g (EOS appended when finished)."""
    groups = len(completions)
    size = len(completions[0])
    terms = terms or [[12, 34, 5]] * groups
    examples = [make_example(t, f"ex{g}") for g, t in enumerate(terms)]
    prefixes = prefixes or [[""] * size for _ in range(groups)]
    finished = finished or [[True] * size for _ in range(groups)]
    prefix_ids, generations, prompt_ids = [], [], []
    for g in range(groups):
        for i in range(size):
            prefix = encode(prefixes[g][i])
            prefix_ids.append(prefix)
            ids = encode(completions[g][i]) + ([TOKENIZER.eos_token_id] if finished[g][i] else [])
            generations.append(Generation(ids, finished[g][i]))
            prompt_ids.append(encode(examples[g].prompt))
    plan = GuidancePlan(prefix_ids=prefix_ids, guided=[bool(p) for p in prefix_ids], length=0.0)
    return build_rollout_batch(examples, size, prompt_ids, plan, generations, TOKENIZER, max_new_tokens, loss_on_guidance, mask_truncated)


def with_rewards(batch: RolloutBatch, rewards: list[float], correct: list[bool] | None = None) -> RolloutBatch:
    batch.rewards = torch.tensor(rewards)
    batch.correct = torch.tensor(correct if correct is not None else [r == 1.0 for r in rewards])
    return batch
