"""One way to check a plugin's options at construction, with messages that name the option.

A named choice is resolved here once, to the function or object it names, so hot paths never compare strings:

    self.normalize = choose("advantage.normalize", normalize, {"group_std": ..., "none": ...})
    check("guidance.period", period, integer=True, low=1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def choose(option: str, value: Any, choices: Mapping[str, T]) -> T:
    """The entry of `choices` that `value` names; an unknown name is an error listing the allowed ones."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{option} must be one of {' | '.join(choices)}, got {value!r}")
    return choices[value]


def check(
    option: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> Any:
    """`value` itself when it is a finite number (an int if `integer`) in the stated range, else a ValueError.

    `low`/`high` are inclusive bounds unless `low_open`/`high_open`; `optional` admits None.
    """
    if value is None and optional:
        return value
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        wanted = kind + (" " + " and ".join(bounds) if bounds else "") + (" or null" if optional else "")
        raise ValueError(f"{option} must be {wanted}, got {value!r}")
    return value
