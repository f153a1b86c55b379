"""How each roll-out batch is used for updates: its size, passes, mini-batches and gradient clipping.
The loss itself is a plugin (`loss=`), the optimizer and its schedule are `optimizer` / `scheduler` nodes."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from torch import Tensor

from rlvr.batch import RolloutBatch
from rlvr.options import check, choose

log = logging.getLogger(__name__)


@dataclass
class AlgorithmConfig:
    prompts_per_step: int = 8  # per rank; samples = prompts x rollout.num_generations
    ppo_epochs: int = 1  # passes over each roll-out batch
    mini_batches: int = 1  # optimizer steps per pass
    micro_batch_size: int | None = None  # gradient accumulation inside a mini-batch (memory only; same gradient)
    max_tokens_per_micro_batch: int | None = None  # ...and a budget of padded tokens per forward pass (memory only)
    shared_prefix: bool = True  # each distinct prompt runs once per forward pass, its keys/values shared by its group
    logprob_chunk_tokens: int | None = 1024  # lm_head on this many tokens at a time: no [N, C, vocab] logits (None: all at once)
    max_grad_norm: float | None = 1.0
    truncation: str = "keep"  # keep: score truncated completions as they are; mask: leave them out of the loss
    max_nonfinite_updates: int = 3  # updates in a row with a NaN/inf loss or gradient (each skipped) before the run stops

    def __post_init__(self):
        check("algorithm.prompts_per_step", self.prompts_per_step, integer=True, low=1)
        check("algorithm.ppo_epochs", self.ppo_epochs, integer=True, low=1)
        check("algorithm.mini_batches", self.mini_batches, integer=True, low=1)
        check("algorithm.micro_batch_size", self.micro_batch_size, integer=True, low=1, optional=True)
        check("algorithm.max_tokens_per_micro_batch", self.max_tokens_per_micro_batch, integer=True, low=1, optional=True)
        check("algorithm.logprob_chunk_tokens", self.logprob_chunk_tokens, integer=True, low=1, optional=True)
        check("algorithm.max_grad_norm", self.max_grad_norm, low=0, low_open=True, optional=True)
        check("algorithm.max_nonfinite_updates", self.max_nonfinite_updates, integer=True, low=1)
        self.mask_truncated: bool = choose("algorithm.truncation", self.truncation, {"keep": False, "mask": True})

    @property
    def optimizer_steps_per_rollout(self) -> int:
        return self.ppo_epochs * self.mini_batches

    @property
    def needs_old_logprobs(self) -> bool:
        """One pass, one optimizer step: the policy that sampled is the one being scored, so the old log-probs
        are the new ones detached (ratio 1, same gradient) and their forward pass is skipped."""
        return self.optimizer_steps_per_rollout > 1

    def micro_batches(self, batch: RolloutBatch) -> list[Tensor]:
        """How `batch` is split into forward passes: by micro_batch_size and max_tokens_per_micro_batch."""
        return batch.micro_batches(self.micro_batch_size, self.max_tokens_per_micro_batch, self.shared_prefix)


class NonFiniteGuard:
    """Lets an optimizer step through only when its loss and gradient norm are finite: a NaN gradient applied
    once makes every weight NaN. A skipped step is not counted (the run draws new roll-outs for it); after
    `limit` skipped steps in a row the run stops with an error naming the step, the lr and what was not finite."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.skipped = limit, 0, 0

    @staticmethod
    def likely_cause(bad: list[str]) -> str:
        """A non-finite loss is computed before any step of this update: the objective (advantages, loss options,
        reward values), not the learning rate. A finite loss with a non-finite gradient points at the step size."""
        if "loss" in bad:
            return ("The loss itself is not finite, before any update: check the advantage and loss options (e.g. a "
                    "normalisation eps of 0 on a group of equal rewards) and the rewards; lowering optimizer.lr will not help")
        return "The loss is finite but its gradient is not: lower optimizer.lr or algorithm.max_grad_norm, or raise algorithm.max_nonfinite_updates"

    def admits(self, stats: dict[str, float], step: int, lr: float) -> bool:
        bad = [key for key in ("loss", "grad_norm") if not math.isfinite(stats[key])]
        if not bad:
            self.in_a_row = 0
            return True
        self.in_a_row, self.skipped = self.in_a_row + 1, self.skipped + 1
        what = f"non-finite {' and '.join(bad)} at optimizer step {step} (lr {lr:.3g})"
        if self.in_a_row >= self.limit:
            raise FloatingPointError(
                f"{self.in_a_row} updates in a row were skipped, the last for a {what}; the weights are unchanged by "
                f"them. {self.likely_cause(bad)}"
            )
        log.warning("skipped an update: %s (%d in a row, at most %d)", what, self.in_a_row, self.limit)
        return False
