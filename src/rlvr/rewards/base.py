"""Reward interface: a completion and its example in, a score and a correctness flag out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from rlvr.batch import Example
from rlvr.options import choose


@dataclass(frozen=True)
class Score:
    reward: float
    correct: bool


class RewardError(RuntimeError):
    pass


class Reward(ABC):
    """Subclasses implement `score`; this class batches it and applies the `on_error` policy.

    on_error="raise" stops training with an error naming the sample; "zero" scores that sample
    0 / incorrect and counts it (metric `train/reward_errors`).
    """

    def __init__(self, on_error: str = "raise"):
        self.on_error = on_error
        self._raise_errors = choose("reward.on_error", on_error, {"raise": True, "zero": False})
        self.last_metrics: dict[str, float] = {}  # what the last call measured (e.g. reward/seconds), logged with its step

    @abstractmethod
    def score(self, completion: str, example: Example) -> Score: ...

    def check_reference(self, example: Example) -> str | None:
        """Why no completion could ever be scored right on `example` (e.g. its reference answer is one this reward's
        parser cannot read), or None when it can. Every problem goes through it before any model loads
        (rlvr.data.checks.checked_splits): a refused one is an error naming it, or skipped (data.bad_answers=skip).
        This default accepts every example; a reward with a parser overrides it, usually by scoring the reference
        itself as a completion. Errors of the check itself (a broken sandbox) are raised, not returned."""
        return None

    def answer_completion(self, answer: str) -> str | None:
        """A completion that gives `answer` and nothing else, as this reward reads answers (math: `\\boxed{answer}`),
        or None (this default) when the reward has no such form. checked_splits scores one question's answer against
        another row of the same question with it, so two right answers written differently are not a conflict."""
        return None

    def check_references(self, examples: list[Example]) -> list[str | None]:
        """`check_reference` of each example, in order; a reward that can check many at once (in parallel) overrides this."""
        return [self.check_reference(e) for e in examples]

    def __call__(self, completions: list[str], examples: list[Example]) -> tuple[Tensor, Tensor, int]:
        rewards, correct, errors = [], [], 0
        for i, (completion, example) in enumerate(zip(completions, examples, strict=True)):
            try:
                result = self.score(completion, example)
            except Exception as exc:
                if self._raise_errors:
                    raise RewardError(
                        f"{type(self).__name__} failed on sample {i} (example {example.id!r}, "
                        f"completion {completion[:200]!r}): {exc!r}. Set reward.on_error=zero to score such samples 0."
                    ) from exc
                result, errors = Score(0.0, False), errors + 1
            rewards.append(float(result.reward))
            correct.append(bool(result.correct))
        return torch.tensor(rewards, dtype=torch.float32), torch.tensor(correct, dtype=torch.bool), errors
