"""Summarise training runs side by side from their metrics.csv (e.g. guidance=none / fixed / adaptive).

    python benchmarks/compare_runs.py runs/grpo runs/adaptive [--window 50]

Per run: greedy val accuracy before training, at its best and at the end; the policy's own (unguided)
sampled accuracy over the first and last `window` steps; the fraction of all-negative groups and of
groups that carry a gradient over those windows; the guidance length at the start and end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlvr.metrics import read_metrics, series


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise(run: Path, window: int) -> dict[str, float]:
    rows = read_metrics(run)
    val = series(rows, "val/accuracy")
    # Unguided roll-outs are the policy's own ability; without guidance every roll-out is unguided.
    own = series(rows, "guidance/accuracy_unguided") or series(rows, "train/accuracy")
    negative, signal, length = (series(rows, k) for k in ("train/all_negative_frac", "train/signal_frac", "guidance/length"))
    return {
        "val@0": val[0] if val else float("nan"),
        "val best": max(val) if val else float("nan"),
        "val end": val[-1] if val else float("nan"),
        "own acc first": mean(own[:window]),
        "own acc last": mean(own[-window:]),
        "all-neg first": mean(negative[:window]),
        "all-neg last": mean(negative[-window:]),
        "signal first": mean(signal[:window]),
        "signal last": mean(signal[-window:]),
        "len first": length[0] if length else 0.0,
        "len last": length[-1] if length else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=50, help="training steps averaged at the start and at the end")
    args = parser.parse_args()
    table = {run.name: summarise(run, args.window) for run in args.runs}
    columns = list(next(iter(table.values())))
    print("| run | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
