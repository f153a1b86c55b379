"""Roll-out engine interface: prompt token ids in, sampled completion token ids out.

The trainer computes log-probs with the policy itself, so engines return none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from rlvr.options import check


@dataclass
class Generation:
    token_ids: list[int]  # sampled tokens, EOS included when the model stopped by itself
    finished: bool  # True: ended with EOS; False: cut at max_new_tokens


class RolloutEngine(ABC):
    """Samples completions. `num_generations` is the group size G the trainer asks for per prompt.

    An engine that keeps its own copy of the weights (vLLM) refreshes it in `update_weights`;
    one that samples from the policy module itself (HF) just keeps the reference.
    """

    def __init__(self, num_generations: int = 8, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256):
        check("rollout.num_generations", num_generations, integer=True, low=1)
        check("rollout.max_new_tokens", max_new_tokens, integer=True, low=1)
        check("rollout.temperature", temperature, low=0)
        check("rollout.top_p", top_p, low=0, high=1, low_open=True)
        self.num_generations = num_generations
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.last_metrics: dict[str, float] = {}  # what the last `generate` measured, logged with its step

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int | None = None, greedy: bool = False) -> list[Generation]:
        """One completion per prompt (the caller repeats a prompt G times); greedy overrides temperature."""

    @abstractmethod
    def update_weights(self, model: Any, tokenizer: Any = None) -> None: ...
