"""Guidance interface: which roll-outs of each group start from a reference-solution prefix, and how long."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlvr.batch import Example, RolloutBatch


@dataclass
class GuidancePlan:
    prefix_ids: list[list[int]]  # [N] token ids put in front of each roll-out's continuation ([] = unguided)
    guided: list[bool]  # [N]
    length: float  # the schedule's length this step, in its unit (tokens or steps)
    unguidable: int = 0  # prompts that would have been guided but have no reference solution


class Guidance:
    """No guidance: every roll-out samples from the bare prompt. Base class of the guided schedules."""

    loss_on_guidance: bool = True
    needs_reference_steps: bool = False  # schedules that copy reference steps into roll-outs say so

    def plan(self, examples: list[Example], group_size: int, tokenizer: Any) -> GuidancePlan:
        n = len(examples) * group_size
        return GuidancePlan(prefix_ids=[[] for _ in range(n)], guided=[False] * n, length=0.0)

    def observe(self, batch: RolloutBatch) -> None:
        """Called once per training step, after rewards are known."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
