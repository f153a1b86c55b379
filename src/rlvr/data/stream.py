"""The prompt stream: which examples each training step sees, owned by the module so it resumes exactly."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import IterableDataset

from rlvr.batch import Example
from rlvr.options import check


class PromptStream:
    """Epochs of seeded permutations, read `prompts_per_step` at a time by each rank.

    Its whole state is (seed, position): after a resume the stream continues with the very prompt
    that would have come next, independent of Lightning's step counters and samplers.
    """

    def __init__(self, examples: list[Example], prompts_per_step: int, seed: int = 0):
        if not examples:
            raise ValueError("the training split has no examples")
        check("algorithm.prompts_per_step", prompts_per_step, integer=True, low=1)
        self.examples, self.prompts_per_step, self.seed = examples, prompts_per_step, seed
        self.position = 0  # prompts consumed by all ranks together
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.examples))
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.examples), generator=generator)
        return int(self._order[offset])

    def next(self, rank: int = 0, world_size: int = 1) -> list[Example]:
        """This rank's prompts for the next step; all ranks advance the shared position together."""
        start = self.position + rank * self.prompts_per_step
        batch = [self.examples[self._index(start + i)] for i in range(self.prompts_per_step)]
        self.position += self.prompts_per_step * world_size
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed, "num_examples": len(self.examples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_examples"] != len(self.examples):
            raise ValueError(f"checkpoint's prompt stream covered {state['num_examples']} examples, this data set has {len(self.examples)}")
        self.seed, self.position = state["seed"], state["position"]


class StepCounter(IterableDataset):
    """Lightning wants a train loader; prompts come from the module's own PromptStream, so this only counts."""

    def __iter__(self):
        return itertools.count()
