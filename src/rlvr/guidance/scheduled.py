"""Guided roll-outs (G²RPO-A, arXiv 2508.13023): the first k roll-outs of every group continue from a prefix
of the reference solution, ℓ units long; the schedules (fixed here, `decay`, `adaptive`) decide how ℓ moves.

ℓ is a float (the adaptive rule multiplies it). The number of units actually handed over is ℓ rounded half
up (2.5 -> 3, 2.4 -> 2), then capped per example at all but the last reference step (unit=steps) or all but
the last reference token (unit=tokens), so the model always has to finish the solution itself.
"""

from __future__ import annotations

import math
from typing import Any

from rlvr.batch import Example, RolloutBatch
from rlvr.guidance.base import Guidance, GuidancePlan
from rlvr.options import check, choose


def round_half_up(x: float) -> int:
    # Python's round() is banker's rounding (2.5 -> 2); a schedule should not treat 1.5 and 2.5 differently.
    return math.floor(x + 0.5)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _token_prefix(example: Example, tokenizer: Any, n: int) -> list[int]:
    ids = _encode(tokenizer, example.solution)
    return ids[: min(n, len(ids) - 1)]


def _step_prefix(example: Example, tokenizer: Any, n: int) -> list[int]:
    n = min(n, len(example.steps) - 1)
    return _encode(tokenizer, example.solution_prefix(n)) if n > 0 else []


# guidance.unit: (example with reference steps, tokenizer, units asked for) -> the capped prefix's token ids.
UNITS = {"tokens": _token_prefix, "steps": _step_prefix}


class ScheduledGuidance(Guidance):
    """Base of the guided schedules: builds the per-sample prefixes from the current ℓ and logs metrics.

    guided_per_group: k roll-outs per group (the first k), or a float in (0, 1): that fraction of the group,
        rounded half up. unit: "tokens" (the paper) or "steps" (never cuts a reference step in half).
    initial_length: ℓ at the first step. max_length: upper bound on ℓ (None: no bound but the per-example cap).
    loss_on_guidance: whether the trainer scores the copied guidance tokens (true = the authors' behaviour).
    Subclasses move ℓ in `_advance`, called once per observed training step.
    """
    needs_reference_steps = True  # it copies them

    def __init__(
        self,
        guided_per_group: int | float = 2,
        unit: str = "steps",
        initial_length: float = 2.0,
        max_length: float | None = None,
        loss_on_guidance: bool = True,
    ):
        # A count or a fraction of the group, told apart by type: 1.0 is a mistake, not "the whole group".
        if isinstance(guided_per_group, bool) or not isinstance(guided_per_group, (int, float)):
            raise ValueError(f"guidance.guided_per_group must be an int or a fraction in (0, 1), got {guided_per_group!r}")
        if isinstance(guided_per_group, int) and guided_per_group < 1:
            raise ValueError(f"guidance.guided_per_group must be >= 1 (use guidance=none for no guidance), got {guided_per_group}")
        if isinstance(guided_per_group, float) and not 0.0 < guided_per_group < 1.0:
            raise ValueError(f"guidance.guided_per_group as a float is a fraction of the group and must be in (0, 1), "
                             f"got {guided_per_group}; write a count as an integer")
        self._prefix = choose("guidance.unit", unit, UNITS)
        check("guidance.initial_length", initial_length, low=0)
        if check("guidance.max_length", max_length, optional=True) is not None and max_length < initial_length:
            raise ValueError(f"guidance.initial_length ({initial_length}) exceeds guidance.max_length ({max_length})")
        self.guided_per_group, self.unit = guided_per_group, unit
        self.initial_length, self.max_length = float(initial_length), None if max_length is None else float(max_length)
        self.loss_on_guidance = bool(loss_on_guidance)
        self.length = float(initial_length)  # current ℓ, in `unit`
        self.steps_observed, self._last_unguidable = 0, 0

    def guided_count(self, group_size: int) -> int:
        """k: how many roll-outs of a group of `group_size` are guided."""
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if isinstance(self.guided_per_group, float):
            k = round_half_up(self.guided_per_group * group_size)
            if k < 1:
                raise ValueError(f"guidance.guided_per_group={self.guided_per_group} of a group of {group_size} rounds to 0 guided roll-outs")
            return k
        if self.guided_per_group > group_size:
            raise ValueError(f"guidance.guided_per_group={self.guided_per_group} exceeds the group size {group_size}")
        return self.guided_per_group

    def units(self) -> int:
        """Reference units asked for this step: ℓ rounded half up (before the per-example cap)."""
        return round_half_up(self.length)

    def prefix_ids(self, example: Example, tokenizer: Any) -> list[int] | None:
        """The guidance tokens for one example at the current ℓ; None when it has no reference steps."""
        return self._prefix(example, tokenizer, self.units()) if example.steps else None

    def plan(self, examples: list[Example], group_size: int, tokenizer: Any) -> GuidancePlan:
        k = self.guided_count(group_size)
        prefixes: list[list[int]] = []  # [N]
        guided, unguidable = [], 0
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

    def observe(self, batch: RolloutBatch) -> None:
        """Log this step's guidance (ℓ as used, before it moves), then let the schedule advance."""
        m = batch.metrics
        m["guidance/length"], m["guidance/units"] = self.length, float(self.units())
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

    def state_dict(self) -> dict[str, Any]:
        return {"length": self.length, "steps_observed": self.steps_observed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [key for key in self.state_dict() if key not in state]
        if missing:
            raise ValueError(f"{type(self).__name__} state is missing {missing}; was it saved by another guidance schedule?")
        self.length = float(state["length"])
        self.steps_observed = int(state["steps_observed"])


class FixedGuidance(ScheduledGuidance):
    """ℓ = initial_length for the whole run."""
