"""Training curves from the CSVLogger's metrics.csv: one subplot per metric, one line per run.

    python -m rlvr.plot outputs/run                       # -> outputs/run/curves.png
    python -m rlvr.plot outputs/none outputs/fixed outputs/adaptive --out guidance.png --smooth 10
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from rlvr.metrics import read_metrics

# (column, subplot title); each is drawn when at least one run logged it.
DEFAULT_METRICS = [
    ("train/reward", "reward"),
    ("train/accuracy", "train accuracy"),
    ("val/accuracy", "val accuracy (greedy)"),
    ("train/all_negative_frac", "all-negative groups"),
    ("train/completion_length", "completion length (tokens)"),
    ("train/kl", "KL to reference"),
    ("train/entropy", "entropy"),
    ("guidance/length", "guidance length"),
    ("sgpo/coloured_frac", "SGPO: all-negative groups given a signal"),
]


def read_curves(run_dir: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Every metric logged in <run_dir>/metrics.csv as its (step, value) pairs (rows that did not log it skipped)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in read_metrics(run_dir):
        for name, value in row.items():
            if name != "step":
                curves.setdefault(name, []).append((row["step"], value))
    return curves


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (1: unchanged)."""
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def present_metrics(runs: list[dict[str, list]], metrics: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The metrics, in order, that at least one run logged: one subplot each."""
    return [(column, title) for column, title in metrics if any(column in run for run in runs)]


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name, or its full path where two runs share a name."""
    names = [d.resolve().name for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs)]


def plot_runs(
    run_dirs: list[str | Path], out: str | Path, metrics: list[tuple[str, str]] | None = None, window: int = 1
) -> Path:
    """Draw the metrics present in any run into one PNG at `out`; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("plot needs at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    runs = [read_curves(d) for d in dirs]
    present = present_metrics(runs, metrics or DEFAULT_METRICS)
    if not present:
        wanted = [column for column, _ in metrics or DEFAULT_METRICS]
        raise ValueError(f"none of the metrics {wanted} is in the metrics.csv of {[str(d) for d in dirs]}")

    cols = min(3, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (column, title) in zip(axes.flat, present):
        for index, (run, label) in enumerate(zip(runs, run_labels(dirs))):
            if column in run:
                steps, values = zip(*run[column])
                sparse = len(steps) < 20  # validation points: shown raw, with markers (a mean would hide drops)
                # A fixed colour per run, so a run missing from one subplot does not shift the others'.
                shown = list(values) if sparse else smooth(list(values), window)
                ax.plot(steps, shown, label=label, color=f"C{index % 10}", marker="o" if sparse else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Lay the figure out, write it (parent folders made) and free it; the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


Band = tuple[list[float], list[float], list[float], list[float]]  # steps, mean, low, high


def plot_bands(panels: list[tuple[str, dict[str, Band]]], out: str | Path, note: str = "") -> Path:
    """One subplot per (title, {label: (steps, mean, low, high)}): each label's mean line over its shaded band,
    in one colour per label across subplots (rlvr.compare's mean-over-seeds curves); `note` goes under the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("plot_bands needs at least one panel")
    labels = list(dict.fromkeys(label for _, lines in panels for label in lines))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels):
        for label, (steps, mean, low, high) in lines.items():
            colour = f"C{labels.index(label) % 10}"
            sparse = len(steps) < 20  # validation points: markers show where the measurements are
            ax.plot(steps, mean, label=label, color=colour, marker="o" if sparse else None, markersize=3)
            ax.fill_between(steps, low, high, color=colour, alpha=0.15, linewidth=0)
        ax.set_title(f"{title}\n{note}" if note else title, fontsize="medium")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvr.plot", description="Plot training curves of one or more rlvr runs.")
    parser.add_argument("run_dirs", nargs="+", help="run directories holding metrics.csv; several are overlaid")
    parser.add_argument("--out", help="PNG to write (default: curves.png in the runs' common parent folder)")
    parser.add_argument("--metric", action="append", help="a metrics.csv column to plot instead of the defaults (repeatable)")
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window in logged points for per-step metrics (default 1: raw); sparse validation points stay raw")
    args = parser.parse_args(argv)
    out = args.out or Path(os.path.commonpath([os.path.abspath(d) for d in args.run_dirs])) / "curves.png"
    metrics = [(m, m) for m in args.metric] if args.metric else None
    try:
        print(f"wrote {plot_runs(args.run_dirs, out, metrics, args.smooth)}")
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))  # the message, not a traceback


if __name__ == "__main__":
    main()
