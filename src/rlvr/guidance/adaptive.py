"""G²RPO-A's adaptive guidance length (arXiv 2508.13023): ℓ follows the accuracy trend."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rlvr.batch import RolloutBatch
from rlvr.guidance.scheduled import ScheduledGuidance
from rlvr.options import check


def global_accuracy(correct: Tensor) -> Fraction:
    """The share of correct roll-outs over every rank, exactly: the counts are all-reduced, not a float32 mean (whose
    0.2 = 0.200000003 made ℓ·ā/a_t = 2.4999999627 instead of 2.5, which rounds down a unit)."""
    counts = torch.stack([correct.sum(), torch.tensor(correct.numel(), device=correct.device)]).long()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    return Fraction(int(counts[0]), max(int(counts[1]), 1))


class AdaptiveGuidance(ScheduledGuidance):
    """G²RPO-A's adaptive ℓ: every `period` steps compare this step's accuracy a_t with ā, the mean accuracy of
    the `window` steps just before it. a_t < ā (worse): ℓ <- min(ℓ·ā/a_t, max_length), more guidance;
    a_t > ā (better): ℓ <- max(floor(ℓ·ā/a_t), 1), less guidance; a_t or ā zero, or equal: ℓ stays.

    a_t is the mean of batch.correct over all the step's roll-outs, guided ones included (the authors'
    accuracy reward), kept as an exact fraction of the counts, and the rule is computed exactly on it (see `update`),
    so a ratio of 2.5 is 2.5. Periods count from the first observed step: with period 3, ℓ moves after steps 3, 6, 9...

    From the authors' code (T-Lab-CUHKSZ/G2RPO-A, src/G2RPO-A/trainer/g2rpoa_trainer.py,
    GRPOTrainer._compute_new_guidance_length, called from GuidanceLengthUpdateCallback.on_step_end):
    cycle position (global_step - 1) % 3 with global_step starting at 1; positions 0 and 1 only store the
    accuracy, position 2 compares with the mean of those two, so ā never spans an earlier period (with our
    defaults period=3, window=2 the last 2 steps are exactly those). No update while fewer than 2 are stored;
    no update when either accuracy is 0. Both branches truncate with int(): min(...) is floored on increase
    too, so ℓ stays an integer there. Here ℓ stays a float on increase unless `floor_increase` (true = theirs);
    with unit=steps, ℓ is small and flooring would pin ℓ=1 until accuracy halves. The new ℓ takes effect at
    the next step. Their ℓ starts at max_guidance_length (3072 tokens).
    """

    def __init__(self, period: int = 3, window: int = 2, floor_increase: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if self.max_length is None:
            raise ValueError("guidance.max_length must be set for the adaptive schedule (ℓ grows multiplicatively)")
        if self.initial_length < 1:
            raise ValueError(f"guidance.initial_length must be >= 1 for the adaptive schedule (ℓ is scaled), got {self.initial_length}")
        self.period = check("guidance.period", period, integer=True, low=1)
        self.window = check("guidance.window", window, integer=True, low=1)
        self.floor_increase = bool(floor_increase)
        self.history: list[Fraction] = []  # the last `window` step accuracies, exact

    def update(self, accuracy: float | Fraction, previous: float | Fraction) -> float:
        """The rule: the new ℓ given this step's accuracy and the mean of the previous window, computed in exact
        rational arithmetic (floats are taken at their exact value) and rounded to a float once, at the end."""
        accuracy, previous = Fraction(accuracy), Fraction(previous)
        if accuracy <= 0 or previous <= 0 or accuracy == previous:
            return self.length
        scaled = Fraction(self.length) * previous / accuracy
        if accuracy < previous:
            grown = min(scaled, Fraction(self.max_length))
            return float(math.floor(grown) if self.floor_increase else grown)
        return float(max(math.floor(scaled), 1))

    def _advance(self, batch: RolloutBatch) -> None:
        if batch.correct is None:
            raise ValueError("AdaptiveGuidance needs batch.correct (the accuracy of each roll-out) in observe()")
        accuracy = global_accuracy(batch.correct)  # every rank must move ℓ alike
        if self.steps_observed % self.period == 0 and len(self.history) >= self.window:
            self.length = self.update(accuracy, sum(self.history) / len(self.history))
        self.history = (self.history + [accuracy])[-self.window :]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": [[a.numerator, a.denominator] for a in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        # [numerator, denominator] pairs; a float is an older checkpoint's accuracy: the nearest small fraction (0.3 is
        # 3/10, not the float's 5404319552844595/18014398509481984), as the count ratio it came from
        self.history = [Fraction(*a) if isinstance(a, (list, tuple)) else Fraction(a).limit_denominator(1 << 20)
                        for a in state["history"]][-self.window :]
