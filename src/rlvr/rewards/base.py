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
