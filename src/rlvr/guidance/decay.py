"""Guided GRPO with ℓ shrinking on a fixed timetable."""

from __future__ import annotations

from typing import Any

from rlvr.batch import RolloutBatch
from rlvr.guidance.scheduled import ScheduledGuidance
from rlvr.options import check, choose

# guidance.mode: (initial ℓ, final ℓ, fraction of the decay done in [0, 1]) -> ℓ.
MODES = {
    "linear": lambda a, b, frac: a + (b - a) * frac,
    "exponential": lambda a, b, frac: (a + 1.0) * ((b + 1.0) / (a + 1.0)) ** frac - 1.0,
}


class DecayGuidance(ScheduledGuidance):
    """ℓ goes from initial_length to final_length over `total_steps` observed steps, then stays at final_length.

    linear: straight line. exponential: geometric in ℓ+1, so it can end at 0 exactly:
    ℓ_t + 1 = (initial+1) * ((final+1)/(initial+1))^(t/total_steps); e.g. 7 -> 0 over 3 steps gives 7, 3, 1, 0.
    """

    def __init__(self, final_length: float = 0.0, total_steps: int = 100, mode: str = "linear", **kwargs: Any):
        super().__init__(**kwargs)
        check("guidance.final_length", final_length, low=0)
        if self.max_length is not None and final_length > self.max_length:
            raise ValueError(f"guidance.final_length ({final_length}) exceeds guidance.max_length ({self.max_length})")
        check("guidance.total_steps", total_steps, integer=True, low=1)
        self._length_at = choose("guidance.mode", mode, MODES)
        self.final_length = float(final_length)
        self.total_steps = total_steps
        self.mode = mode

    def length_at(self, step: int) -> float:
        """ℓ after `step` observed steps."""
        return self._length_at(self.initial_length, self.final_length, min(step / self.total_steps, 1.0))

    def _advance(self, batch: RolloutBatch) -> None:
        self.length = self.length_at(self.steps_observed)
