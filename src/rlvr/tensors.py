"""Small tensor helpers shared across the package: padding token rows into a batch, masked means. No I/O."""

from __future__ import annotations

import torch
from torch import Tensor

SIDES = ("left", "right")


def pad_sequences(rows: list[list[int]], pad_id: int, side: str = "left", width: int | None = None) -> tuple[Tensor, Tensor]:
    """Token rows as one [len(rows), width] LongTensor of ids and its 0/1 LongTensor attention mask.

    side "left": each row ends at the last column (prompts for generation); "right": each row starts at
    column 0. `width` defaults to the longest row; a row longer than `width` is an error.
    """
    if side not in SIDES:
        raise ValueError(f"padding side must be one of {' | '.join(SIDES)}, got {side!r}")
    longest = max((len(r) for r in rows), default=0)
    if width is None:
        width = longest
    elif width < longest:
        raise ValueError(f"pad width {width} is shorter than the longest row ({longest} tokens)")
    left = side == "left"
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        # Explicit start/end: a left-padded empty row must give an empty slice, which `-len(row):` would not.
        start, end = (width - len(row), width) if left else (0, len(row))
        ids[i, start:end] = torch.tensor(row, dtype=torch.long)
        mask[i, start:end] = 1
    return ids, mask


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(values * mask) / sum(mask), over everything or along `dim`; 0 where the mask is empty.

    The mask (bool, int or float 0/1 weights) is cast to `values`' dtype first, and the count is
    clamped to at least 1, so an all-zero mask gives 0 rather than NaN.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)
