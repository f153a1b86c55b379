"""How each roll-out batch is used for updates: its size, passes, mini-batches and gradient clipping.
The loss itself is a plugin (`loss=`), the optimizer and its schedule are `optimizer` / `scheduler` nodes."""

from __future__ import annotations

from dataclasses import dataclass

from rlvr.options import check, choose


@dataclass
class AlgorithmConfig:
    prompts_per_step: int = 8  # per rank; samples = prompts x rollout.num_generations
    ppo_epochs: int = 1  # passes over each roll-out batch
    mini_batches: int = 1  # optimizer steps per pass
    micro_batch_size: int | None = None  # gradient accumulation inside a mini-batch (memory only; same gradient)
    max_grad_norm: float | None = 1.0
    truncation: str = "keep"  # keep: score truncated completions as they are; mask: leave them out of the loss

    def __post_init__(self):
        check("algorithm.prompts_per_step", self.prompts_per_step, integer=True, low=1)
        check("algorithm.ppo_epochs", self.ppo_epochs, integer=True, low=1)
        check("algorithm.mini_batches", self.mini_batches, integer=True, low=1)
        check("algorithm.micro_batch_size", self.micro_batch_size, integer=True, low=1, optional=True)
        check("algorithm.max_grad_norm", self.max_grad_norm, low=0, low_open=True, optional=True)
        self.mask_truncated: bool = choose("algorithm.truncation", self.truncation, {"keep": False, "mask": True})

    @property
    def optimizer_steps_per_rollout(self) -> int:
        return self.ppo_epochs * self.mini_batches
