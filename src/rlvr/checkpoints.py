"""When checkpoints are written, and what a signal does.

A step's checkpoint is written at the start of the next step (or at the end of training): by then that step's
metrics row and any validation due at it are on disk (the loggers are flushed first), so a kill at any moment
leaves a checkpoint whose step is fully recorded, or the earlier one. The checkpoint carries that record (the
step's rows of metrics.csv) and the run's resolved config, so a resume can put back a lost row and compare what
changed (rlvr.train). `step<N>.ckpt` is written once; `last.ckpt` is a hard link to it (no second full write).

SIGTERM (docker stop, Kubernetes, systemd, kill) and SIGINT (Ctrl-C) stop a run at the end of the step in
progress: it saves last.ckpt there and exits 143 / 130 (128 + the signal), exporting nothing. Before training
starts there is nothing to save: the process exits at once, with the same status. A second signal while the stop
is pending exits at once too (a checkpoint being written is staged and renamed, so none is left half-written).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from rlvr.state import capture_rng, restore_rng

log = logging.getLogger(__name__)
RUN_KEY = "rlvr_run"  # checkpoint entry: {"config": resolved config, "record": {"step": ..., "rows": [...]}}


def step_rows(metrics_file: Path, step: int) -> list[dict[str, str]]:
    """The rows of metrics.csv logged at roll-out step `step` (its step column is the step count minus one)."""
    if not metrics_file.is_file():
        return []
    with metrics_file.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("step") == str(step - 1) and None not in row.values()]


class StepCheckpoints(pl.Callback):
    """`step<global step>.ckpt` every `every` optimizer steps and `last.ckpt`, each once the step is recorded."""

    def __init__(self, dirpath: Path, every: int, steps_per_rollout: int, config: dict[str, Any]):
        self.dirpath, self.every, self.steps_per_rollout, self.config = Path(dirpath), every, steps_per_rollout, config
        self.saved_step: int | None = None  # the global step last.ckpt holds
        self.metrics_file: Path | None = None
        self.rng_at_step_end: dict[str, Any] | None = None

    @property
    def last(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.saved_step = trainer.global_step  # a resumed run's last.ckpt already holds this step
        logger = trainer.logger
        self.metrics_file = Path(logger.experiment.metrics_file_path) if isinstance(logger, CSVLogger) and trainer.is_global_zero else None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.save(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.rng_at_step_end = capture_rng()

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.save(trainer, last=True)

    def save(self, trainer: pl.Trainer, last: bool = False) -> None:
        """The checkpoint due at this step (and last.ckpt with it); `last`: last.ckpt even when none is due."""
        step = trainer.global_step
        due = step > 0 and step % self.every == 0
        if step == self.saved_step or not (due or last):
            return
        for logger in trainer.loggers:
            logger.save()  # the step's rows on disk before the checkpoint that says they are
        # The random state as it was at the step's end, where Lightning's own checkpoints are taken: resuming, Lightning
        # re-creates a due validation's loader, drawing what that validation drew in the uninterrupted run.
        now = capture_rng()
        if self.rng_at_step_end is not None:
            restore_rng(self.rng_at_step_end)
        try:
            path = self.dirpath / f"step{step:06d}.ckpt" if due else self.last
            trainer.save_checkpoint(path)
        finally:
            restore_rng(now)
        if due:
            if trainer.is_global_zero:
                self._link_last(path)
            trainer.strategy.barrier()
        self.saved_step = step

    def _link_last(self, path: Path) -> None:
        staged = self.last.with_name(".last.ckpt.link")
        staged.unlink(missing_ok=True)
        try:
            os.link(path, staged)
        except OSError as err:  # a filesystem without hard links: a copy (still atomic through the rename)
            log.warning(f"cannot hard-link {self.last} to {path.name} ({err}); copying it")
            shutil.copyfile(path, staged)
        os.replace(staged, self.last)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        rollout_step = trainer.global_step // self.steps_per_rollout
        rows = step_rows(self.metrics_file, rollout_step) if self.metrics_file else []
        checkpoint[RUN_KEY] = {"config": self.config, "record": {"step": rollout_step, "rows": rows}}
        # Saved at the next step's start, Lightning's counters already count that step as begun: they are put back as
        # they stood at the saved step's end (where Lightning's own checkpoints are taken), so a resume neither
        # counts the step twice nor repeats its validation.
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        progress, state = loops.get("epoch_loop.batch_progress"), loops.get("epoch_loop.state_dict")
        if progress and state and progress["total"]["ready"] == progress["total"]["started"] + 1:
            for part in (progress["total"], progress["current"]):
                part["ready"], part["completed"] = part["started"], part["processed"] - 1
            state["_batches_that_stepped"] -= 1


class StopOnSignal(pl.Callback):
    """SIGTERM / SIGINT: note it; at the start of the next step (the one in progress recorded) save last.ckpt and
    leave with 128 + the signal. Every rank decides together (a signal seen by any rank): saving is collective.
    `defer_to`: in a Slurm job, the requeue handler (rlvr.slurm); once it has its signal, a SIGTERM (Slurm's, at the
    time limit) is passed over, as submitit does, and the job requeues."""

    def __init__(self, checkpoints: StepCheckpoints | None = None, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
                 defer_to: "StopOnSignal | None" = None):
        self.checkpoints, self.signals, self.defer_to = checkpoints, signals, defer_to
        self.received: signal.Signals | None = None
        self.armed = False  # training runs: a signal waits for the step's end

    def install(self) -> "StopOnSignal":
        for sig in self.signals:
            signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        if self.deferred:
            log.warning(f"received {signal.Signals(signum).name} after {self.defer_to.received.name}: passed over, the job requeues")
            return
        again = self.received is not None  # the user insists: no waiting for the step's end
        self.received = signal.Signals(signum)
        if again or not self.armed:  # no step in progress: nothing to save, nothing half-written to keep
            raise SystemExit(128 + signum)

    @property
    def deferred(self) -> bool:
        return self.defer_to is not None and self.defer_to.received is not None

    @property
    def exit_status(self) -> int | None:
        return None if self.received is None else 128 + self.received

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.install()  # over Lightning's own SIGTERM handler (it would stop validation midway or not at all)
        self.armed = True

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False) and not self.deferred:
            self.stop(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.armed = False  # after training (the export): a signal exits at once; the export is staged, never partial

    def stop(self, trainer: pl.Trainer) -> None:
        name = self.received.name if self.received else "a signal on another rank"
        log.warning(f"received {name}: saving {self.checkpoints.last} at step {trainer.global_step}, then exiting")
        self.checkpoints.save(trainer, last=True)
        self.armed = False
        raise SystemExit(self.exit_status or 128 + signal.SIGTERM)
