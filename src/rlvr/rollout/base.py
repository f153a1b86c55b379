"""Roll-out engine interface: prompt token ids in, sampled completion token ids (and log-probs, if cheap) out.

The trainer recomputes log-probs with the policy itself, so an engine's own are informational only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass
class Generation:
    token_ids: list[int]  # sampled tokens, EOS included when the model stopped by itself
    logprobs: list[float] | None  # the engine's log-prob of each sampled token, if it reports them cheaply
    finished: bool  # True: ended with EOS; False: cut at max_new_tokens


class RolloutEngine(ABC):
    """Samples completions. `num_generations` is the group size G the trainer asks for per prompt.

    An engine that keeps its own copy of the weights (vLLM) refreshes it in `update_weights`;
    one that samples from the policy module itself (HF) just keeps the reference.
    """

    def __init__(self, num_generations: int = 8, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256):
        if num_generations < 1 or max_new_tokens < 1:
            raise ValueError("rollout.num_generations and rollout.max_new_tokens must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        self.num_generations = num_generations
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int | None = None, greedy: bool = False) -> list[Generation]:
        """One completion per prompt (the caller repeats a prompt G times); greedy overrides temperature."""

    @abstractmethod
    def update_weights(self, model: Any, tokenizer: Any = None) -> None: ...
