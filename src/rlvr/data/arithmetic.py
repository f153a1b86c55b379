"""The embedded default task: multi-step addition written as running partial sums.

`12+34+5=` is answered `12+34=46;46+5=51#51`: one step per addition, `;` between steps, `#` before
the final answer. Every step is checkable, so the rule judge knows exactly where a response first
goes wrong, and the reference steps are what guided roll-outs start from.
"""

from __future__ import annotations

import random
import re

from rlvr.batch import Example
from rlvr.options import check

STEP_SEPARATOR = ";"
ANSWER_MARK = "#"
_PROMPT = re.compile(r"^\d+(\+\d+)+=$")


def make_example(terms: list[int], example_id: str) -> Example:
    steps, total = [], terms[0]
    for term in terms[1:]:
        steps.append(f"{total}+{term}={total + term}")
        total += term
    return Example(
        id=example_id,
        prompt="+".join(map(str, terms)) + "=",
        answer=str(total),
        steps=tuple(steps),
        step_separator=STEP_SEPARATOR,
        step_style="separator",
        meta={"terms": list(terms)},
    )


def parse_terms(prompt: str) -> list[int]:
    if not _PROMPT.match(prompt):
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    return [int(t) for t in prompt[:-1].split("+")]


def target_text(example: Example) -> str:
    """The full reference completion (what the warm-start is trained to write)."""
    return example.solution + ANSWER_MARK + example.answer


def final_answer(completion: str) -> str | None:
    """The text after the last answer mark, or None when the response never gave one."""
    if ANSWER_MARK not in completion:
        return None
    return completion.rsplit(ANSWER_MARK, 1)[1].strip()


def sample_terms(rng: random.Random, num_terms: int, max_value: int) -> list[int]:
    return [rng.randint(1, max_value) for _ in range(num_terms)]


class ArithmeticTask:
    """Synthetic problems with `min_terms..max_terms` terms, each in 1..max_value.

    Train and validation sets are drawn from different seeds, validation prompts removed from train; validation is balanced over term counts so
    per-difficulty accuracy is measured on equal footing.
    """

    name = "arithmetic"
    prompt_template = "{prompt}"
    use_chat_template = False

    def __init__(self, min_terms: int = 2, max_terms: int = 5, max_value: int = 999, train_size: int = 20000, val_size: int = 200, seed: int = 0,
                 max_new_tokens: int = 96):
        check("data.min_terms", min_terms, integer=True, low=2)
        if check("data.max_terms", max_terms, integer=True) < min_terms:
            raise ValueError(f"data.max_terms ({max_terms}) is below data.min_terms ({min_terms})")
        check("data.max_value", max_value, integer=True, low=1)
        check("data.train_size", train_size, integer=True, low=0)
        check("data.val_size", val_size, integer=True, low=0)
        self.min_terms, self.max_terms, self.max_value = min_terms, max_terms, max_value
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.max_new_tokens = check("data.max_new_tokens", max_new_tokens, integer=True, low=1)  # fits a 5-term answer

    def _draw(self, count: int, seed: int, split: str) -> list[Example]:
        rng = random.Random(seed)
        spans = list(range(self.min_terms, self.max_terms + 1))
        return [
            make_example(sample_terms(rng, spans[i % len(spans)], self.max_value), f"{split}-{i}")
            for i in range(count)
        ]

    def train(self) -> list[Example]:
        held_out = {e.prompt for e in self.val()}
        return [e for e in self._draw(self.train_size, self.seed, "train") if e.prompt not in held_out]

    def val(self) -> list[Example]:
        return self._draw(self.val_size, self.seed + 1_000_003, "val")
