"""Guided roll-outs (G²RPO-A, arXiv 2508.13023): the first k roll-outs of every group continue from a prefix
of the reference solution, ℓ units long; the schedules below decide how ℓ moves during training.

ℓ is a float (the adaptive rule multiplies it). The number of units actually handed over is ℓ rounded half
up (2.5 -> 3, 2.4 -> 2), then capped per example at all but the last reference step (unit=steps) or all but
the last reference token (unit=tokens), so the model always has to finish the solution itself.
"""

from __future__ import annotations

import math
from typing import Any

from rlvr.batch import Example, RolloutBatch
from rlvr.distributed import global_mean
from rlvr.guidance.base import Guidance, GuidancePlan

UNITS = ("tokens", "steps")


def round_half_up(x: float) -> int:
    # Python's round() is banker's rounding (2.5 -> 2); a schedule should not treat 1.5 and 2.5 differently.
    return math.floor(x + 0.5)


class ScheduledGuidance(Guidance):
    """Base of the guided schedules: builds the per-sample prefixes from the current ℓ and logs metrics.

    guided_per_group: k roll-outs per group (the first k), or a float in (0, 1): that fraction of the group,
        rounded half up. unit: "tokens" (the paper) or "steps" (never cuts a reference step in half).
    initial_length: ℓ at the first step. max_length: upper bound on ℓ (None: no bound but the per-example cap).
    loss_on_guidance: whether the trainer scores the copied guidance tokens (true = the authors' behaviour).
    Subclasses move ℓ in `_advance`, called once per observed training step.
    """

    def __init__(
        self,
        guided_per_group: int | float = 2,
        unit: str = "steps",
        initial_length: float = 2.0,
        max_length: float | None = None,
        loss_on_guidance: bool = True,
    ):
        if isinstance(guided_per_group, bool) or not isinstance(guided_per_group, (int, float)):
            raise ValueError(f"guidance.guided_per_group must be an int or a fraction in (0, 1), got {guided_per_group!r}")
        if isinstance(guided_per_group, int) and guided_per_group < 1:
            raise ValueError(f"guidance.guided_per_group must be >= 1 (use guidance=none for no guidance), got {guided_per_group}")
        if isinstance(guided_per_group, float) and not 0.0 < guided_per_group < 1.0:
            raise ValueError(
                f"guidance.guided_per_group as a float is a fraction of the group and must be in (0, 1), got {guided_per_group}; "
                "write a count as an integer"
            )
        if unit not in UNITS:
            raise ValueError(f"guidance.unit must be one of {' | '.join(UNITS)}, got {unit!r}")
        if initial_length < 0:
            raise ValueError(f"guidance.initial_length must be >= 0, got {initial_length}")
        if max_length is not None and max_length < initial_length:
            raise ValueError(f"guidance.initial_length ({initial_length}) exceeds guidance.max_length ({max_length})")
        self.guided_per_group = guided_per_group
        self.unit = unit
        self.initial_length = float(initial_length)
        self.max_length = None if max_length is None else float(max_length)
        self.loss_on_guidance = bool(loss_on_guidance)
        self.length = float(initial_length)  # current ℓ, in `unit`
        self.steps_observed = 0
        self._last_unguidable = 0

    # --- plan -----------------------------------------------------------------------------------------------

    def guided_count(self, group_size: int) -> int:
        """k: how many roll-outs of a group of `group_size` are guided."""
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if isinstance(self.guided_per_group, float):
            k = round_half_up(self.guided_per_group * group_size)
            if k < 1:
                raise ValueError(
                    f"guidance.guided_per_group={self.guided_per_group} of a group of {group_size} rounds to 0 guided roll-outs"
                )
            return k
        if self.guided_per_group > group_size:
            raise ValueError(f"guidance.guided_per_group={self.guided_per_group} exceeds the group size {group_size}")
        return self.guided_per_group

    def units(self) -> int:
        """Reference units asked for this step: ℓ rounded half up (before the per-example cap)."""
        return round_half_up(self.length)

    def prefix_ids(self, example: Example, tokenizer: Any) -> list[int] | None:
        """The guidance tokens for one example at the current ℓ; None when it has no reference steps."""
        if not example.steps:
            return None
        n = self.units()
        if self.unit == "steps":
            n = min(n, len(example.steps) - 1)
            return _encode(tokenizer, example.solution_prefix(n)) if n > 0 else []
        ids = _encode(tokenizer, example.solution)
        return ids[: min(n, len(ids) - 1)]

    def plan(self, examples: list[Example], group_size: int, tokenizer: Any) -> GuidancePlan:
        k = self.guided_count(group_size)
        prefixes: list[list[int]] = []
        guided: list[bool] = []
        unguidable = 0
        for example in examples:
            # ℓ rounding to 0 guides nobody, and then no prompt "would have been guided".
            prefix = self.prefix_ids(example, tokenizer) if self.units() > 0 else []
            if prefix is None:
                unguidable += 1
                prefix = []
            for i in range(group_size):
                # A one-step reference caps to an empty prefix: that sample is simply unguided.
                take = i < k and len(prefix) > 0
                prefixes.append(list(prefix) if take else [])
                guided.append(take)
        self._last_unguidable = unguidable
        return GuidancePlan(prefix_ids=prefixes, guided=guided, length=self.length, unguidable=unguidable)

    # --- observe --------------------------------------------------------------------------------------------

    def observe(self, batch: RolloutBatch) -> None:
        """Log this step's guidance (ℓ as used, before it moves), then let the schedule advance."""
        m = batch.metrics
        m["guidance/length"] = self.length
        m["guidance/units"] = float(self.units())
        m["guidance/unguidable"] = float(self._last_unguidable)
        guided = batch.guided.bool()
        if guided.numel():
            m["guidance/guided_frac"] = guided.float().mean().item()
        if batch.correct is not None:
            correct = batch.correct.float()
            if guided.any():
                m["guidance/accuracy_guided"] = correct[guided].mean().item()
            if (~guided).any():
                m["guidance/accuracy_unguided"] = correct[~guided].mean().item()
        self.steps_observed += 1
        self._advance(batch)

    def _advance(self, batch: RolloutBatch) -> None:
        """Move ℓ after step `self.steps_observed` (1-based); constant here."""

    # --- checkpoint -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"length": self.length, "steps_observed": self.steps_observed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [key for key in self.state_dict() if key not in state]
        if missing:
            raise ValueError(f"{type(self).__name__} state is missing {missing}; was it saved by another guidance schedule?")
        self.length = float(state["length"])
        self.steps_observed = int(state["steps_observed"])


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class FixedGuidance(ScheduledGuidance):
    """ℓ = initial_length for the whole run."""


class DecayGuidance(ScheduledGuidance):
    """ℓ goes from initial_length to final_length over `total_steps` observed steps, then stays at final_length.

    linear: straight line. exponential: geometric in ℓ+1, so it can end at 0 exactly:
    ℓ_t + 1 = (initial+1) * ((final+1)/(initial+1))^(t/total_steps); e.g. 7 -> 0 over 3 steps gives 7, 3, 1, 0.
    """

    def __init__(self, final_length: float = 0.0, total_steps: int = 100, mode: str = "linear", **kwargs: Any):
        super().__init__(**kwargs)
        if final_length < 0:
            raise ValueError(f"guidance.final_length must be >= 0, got {final_length}")
        if self.max_length is not None and final_length > self.max_length:
            raise ValueError(f"guidance.final_length ({final_length}) exceeds guidance.max_length ({self.max_length})")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"guidance.total_steps must be an integer >= 1, got {total_steps!r}")
        if mode not in ("linear", "exponential"):
            raise ValueError(f"guidance.mode must be linear | exponential, got {mode!r}")
        self.final_length = float(final_length)
        self.total_steps = total_steps
        self.mode = mode

    def length_at(self, step: int) -> float:
        """ℓ after `step` observed steps."""
        frac = min(step / self.total_steps, 1.0)
        a, b = self.initial_length, self.final_length
        if self.mode == "linear":
            return a + (b - a) * frac
        return (a + 1.0) * ((b + 1.0) / (a + 1.0)) ** frac - 1.0

    def _advance(self, batch: RolloutBatch) -> None:
        self.length = self.length_at(self.steps_observed)


class AdaptiveGuidance(ScheduledGuidance):
    """G²RPO-A's adaptive ℓ: every `period` steps compare this step's accuracy a_t with ā, the mean accuracy of
    the `window` steps just before it. a_t < ā (worse): ℓ <- min(ℓ·ā/a_t, max_length), more guidance;
    a_t > ā (better): ℓ <- max(floor(ℓ·ā/a_t), 1), less guidance; a_t or ā zero, or equal: ℓ stays.

    a_t is the mean of batch.correct over all the step's roll-outs, guided ones included (the authors'
    accuracy reward). Periods count from the first observed step: with period 3, ℓ moves after steps 3, 6, 9...

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
        for name, value in (("period", period), ("window", window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"guidance.{name} must be an integer >= 1, got {value!r}")
        self.period = period
        self.window = window
        self.floor_increase = bool(floor_increase)
        self.history: list[float] = []  # the last `window` step accuracies

    def update(self, accuracy: float, previous: float) -> float:
        """The rule: the new ℓ given this step's accuracy and the mean of the previous window."""
        if accuracy <= 0 or previous <= 0 or accuracy == previous:
            return self.length
        scaled = self.length * previous / accuracy
        if accuracy < previous:
            grown = min(scaled, self.max_length)
            return float(math.floor(grown)) if self.floor_increase else grown
        return float(max(math.floor(scaled), 1))

    def _advance(self, batch: RolloutBatch) -> None:
        if batch.correct is None:
            raise ValueError("AdaptiveGuidance needs batch.correct (the accuracy of each roll-out) in observe()")
        accuracy = global_mean(batch.correct)  # every rank must move ℓ alike
        if self.steps_observed % self.period == 0 and len(self.history) >= self.window:
            self.length = self.update(accuracy, sum(self.history) / len(self.history))
        self.history = (self.history + [accuracy])[-self.window :]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = [float(a) for a in state["history"]][-self.window :]


__all__ = ["ScheduledGuidance", "FixedGuidance", "DecayGuidance", "AdaptiveGuidance", "round_half_up"]
