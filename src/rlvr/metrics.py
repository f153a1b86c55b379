"""What one training step logs (outcomes of the roll-outs, the update's statistics, where time went), and
reading a run's metrics.csv back: the one parser behind rlvr.plot, benchmarks and tests.

Lightning's CSVLogger writes one row per logging call, with a column for every metric ever logged and the
cells of the metrics that call did not log left empty; `read_metrics` keeps only a row's logged cells.
"""

from __future__ import annotations

import csv
import re
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlvr.batch import RolloutBatch
from rlvr.models.hf import pad_token_id

SHOWN = ("train/reward", "train/accuracy")  # on the progress bar


class PeakMemory:
    """Peak memory of one step, in GB (1e9 bytes): CUDA's max allocated on a GPU; on CPU the process's peak
    resident set (Linux VmHWM, reset each step through /proc/self/clear_refs; where that file cannot be
    written, the peak since the process started)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass  # no reset: the value read is the process's peak so far, an upper bound of the step's

    def gb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 1e9
        try:
            with open("/proc/self/status") as handle:
                return int(re.search(r"VmHWM:\s+(\d+) kB", handle.read()).group(1)) * 1024 / 1e9
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


@contextmanager
def timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def completion_lengths(batch: RolloutBatch) -> torch.Tensor:
    """[N] tokens the policy generated itself, its EOS included: not copied guidance tokens, nor padding an engine
    returned (a pad token that is not EOS, or anything after the first EOS)."""
    ids, positions = batch.completion_ids, torch.arange(batch.completion_ids.shape[1], device=batch.completion_ids.device)
    own = batch.token_mask.bool() & (positions[None, :] >= batch.guidance_tokens[:, None].to(ids.device))
    tokenizer = batch.tokenizer
    if tokenizer is not None:
        pad, eos = pad_token_id(tokenizer), tokenizer.eos_token_id
        if pad != eos:
            own &= ids != pad
        if eos is not None:
            is_eos = own & (ids == eos)
            own &= (is_eos.cumsum(-1) - is_eos.long()) == 0  # up to and including the first EOS
    return own.sum(-1).float()


def step_metrics(batch: RolloutBatch, update: dict[str, float], timings: dict[str, float], **extra: float) -> dict[str, float]:
    """Rank-local metrics of one step (the trainer averages them over ranks); `extra` is added as it is."""
    correct = batch.correct.float()
    group_correct = correct.view(batch.num_groups, batch.group_size).sum(-1)
    lengths = completion_lengths(batch)
    group_signal = batch.advantages.abs().sum(-1).view(batch.num_groups, -1).sum(-1) > 0
    return {
        "train/reward": batch.rewards.float().mean().item(),
        "train/accuracy": correct.mean().item(),
        "train/all_negative_frac": (group_correct == 0).float().mean().item(),
        "train/all_positive_frac": (group_correct == batch.group_size).float().mean().item(),
        "train/signal_frac": group_signal.float().mean().item(),
        "train/completion_length": lengths.mean().item(),
        "train/truncated_frac": batch.truncated.float().mean().item(),
        **extra,
        "time/rollout_s": timings["rollout"],
        "time/update_s": timings["update"],
        "time/step_s": sum(timings.values()),
        "time/generated_tokens_per_s": lengths.sum().item() / max(timings["rollout"], 1e-9),
        **{f"train/{k}": v for k, v in update.items()},
    }


def plugin_metrics(batch: RolloutBatch, step_seconds: float) -> dict[str, Any]:
    """What the plugins wrote into the batch, plus the judge's share of the step."""
    metrics = dict(batch.metrics)
    if "judge/seconds" in metrics:
        metrics["judge/share_of_step"] = metrics["judge/seconds"] / max(step_seconds, 1e-9)
    return metrics


METRICS_FILE = "metrics.csv"


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of <run_dir>/metrics.csv in file order, each {column: value} for the cells it logged
    (so `name in row` means that row logged it). Every row has a "step"; a cell that is not a number,
    a missing file or a missing step column is an error naming the file (and line and column)."""
    file = Path(run_dir) / METRICS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir} (expected {file}, written by the csv logger)")
    rows: list[dict[str, float]] = []
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{file} has no 'step' column (columns: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            parsed = {"step": _number(row["step"], file, line, "step")}
            for name, text in row.items():
                if name != "step" and name is not None and text not in (None, ""):
                    parsed[name] = _number(text, file, line, name)
            rows.append(parsed)
    return rows


def series(rows: list[dict[str, float]], name: str) -> list[float]:
    """The values of one metric in logging order (the rows that logged it)."""
    return [row[name] for row in rows if name in row]


def _number(text: str | None, file: Path, line: int, column: str) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{file}, line {line}: column {column!r} is not a number: {text!r}") from None
