"""Slurm through submitit (`hydra/launcher=slurm`, conf/hydra/launcher/slurm.yaml).

- A job whose training raises exits non-zero: Slurm records it FAILED and its own log holds the traceback
  (Hydra's job runner would otherwise turn the error into a result, and the job would end COMPLETED 0:0).
- The signal Slurm sends before the time limit (or on preemption) only sets a flag; once that training step is
  recorded the run saves `last.ckpt`, then submitit requeues the job. The requeued job runs the same sweep point in
  the same run directory and `rlvr.train` resumes it from that checkpoint (`SLURM_RESTART_COUNT` > 0).
- GPUs and tasks per node follow `trainer.accelerator` / `trainer.devices` (resolvers below).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, NoReturn

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import ListConfig, OmegaConf

from rlvr.checkpoints import StepCheckpoints, StopOnSignal

log = logging.getLogger(__name__)


def tasks_per_node(devices: Any) -> int:
    """One Slurm task per device: under Slurm, Lightning expects srun to start every rank itself."""
    if isinstance(devices, (list, tuple, ListConfig)) and len(devices) > 0:
        return len(devices)
    text = str(devices).strip()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if "," in text and all(part.strip().isdigit() for part in text.split(",") if part.strip()):
        return len([part for part in text.split(",") if part.strip()])
    raise ValueError(f"trainer.devices={devices!r} cannot size a Slurm job: give the number of devices per node, "
                     "e.g. trainer.devices=4 (it sets hydra.launcher.tasks_per_node and gpus_per_node)")


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to request: one per device for a GPU trainer; none for CPU (`trainer=default` requests no GPU)."""
    return tasks_per_node(devices) if str(accelerator) in ("gpu", "cuda") else None


def signal_delay_s(timeout_min: Any) -> int:
    """5 minutes before the limit, a tenth of a shorter one: a signal due before the job even starts would requeue
    it after one step, over and over."""
    return min(300, int(timeout_min) * 6)


OmegaConf.register_new_resolver("rlvr.slurm_tasks", tasks_per_node, replace=True)
OmegaConf.register_new_resolver("rlvr.slurm_signal_delay", signal_delay_s, replace=True)
OmegaConf.register_new_resolver("rlvr.slurm_gpus", gpus_per_node, replace=True)


def submitit_job() -> bool:
    """Running inside a submitit Slurm job (its signal handler is installed before the task starts)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def fail_job() -> NoReturn:
    """Called while handling the task's exception inside a submitit job: print its traceback to the job's log
    (stderr), store it as submitit's error result (the sweep raises it, naming the error and the log), exit 1.

    Raising would not do: Hydra's job runner catches the exception and returns it as the job's result, and the
    job would exit 0. SystemExit passes Hydra and submitit both.
    """
    from submitit import JobEnvironment
    from submitit.core import utils

    trace = traceback.format_exc()
    log.error("the job failed", exc_info=True)  # also in the run directory's log
    print(trace, file=sys.stderr, flush=True)
    with utils.temporary_save_path(JobEnvironment().paths.result_pickle) as tmp:
        utils.cloudpickle_dump(("error", trace), tmp)  # submitit's own format for a failed job's result
    raise SystemExit(1)


def requeue_signal() -> signal.Signals:
    import submitit

    return signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise


def restarted() -> bool:
    """This Slurm job was requeued (by the time-limit signal, a preemption or an administrator) and runs again."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def lightning_plugins() -> list:
    """Lightning has its own Slurm auto-requeue (SIGUSR1, saving in the handler, mid-step): off, so that one
    mechanism handles the signal."""
    return [SLURMEnvironment(auto_requeue=False)] if submitit_job() else []


class RequeueOnSignal(StopOnSignal):
    """Checkpoint at a step boundary, then let submitit requeue the job.

    submitit's own handler requeues at once, wherever training is; here it only runs once the step is saved: at the
    start of the next step, when that step's metrics and any validation due are written (rlvr.checkpoints). A signal
    while the model loads waits for the first step. Every rank decides together (a signal seen by any rank).
    """

    def __init__(self, checkpoints: StepCheckpoints | None = None, sig: signal.Signals | None = None) -> None:
        super().__init__(checkpoints, (sig or requeue_signal(),))
        self.armed = True  # never exits from the handler itself: the job requeues, with its step saved
        self.submitit_handler: Callable | None = None

    @property
    def signal(self) -> signal.Signals:
        return self.signals[0]

    def install(self) -> "RequeueOnSignal":
        if self.submitit_handler is None:
            previous = signal.getsignal(self.signal)
            self.submitit_handler = previous if callable(previous) and previous != self._note else None
        signal.signal(self.signal, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)  # acted on at the step's end, however often it comes

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        pass  # after training the job ends by itself

    def stop(self, trainer: pl.Trainer) -> None:
        log.warning(f"received {self.signal.name}: saving {self.checkpoints.last} at step {trainer.global_step}, then requeueing")
        self.checkpoints.save(trainer, last=True)
        if not trainer.is_global_zero:
            time.sleep(120)  # rank 0 requeues the whole job, which ends this task too; leaving first could end the job
            raise SystemExit("the job was to be requeued by rank 0 but this task was not stopped")
        if self.submitit_handler is None:
            raise RuntimeError(f"received {self.signal.name} and saved {self.checkpoints.last}, but no submitit handler is "
                               "there to requeue the job: resume it with ckpt_path=auto and the same hydra.run.dir")
        # submitit: requeue (`scontrol requeue`) and exit; or raise where no requeue is left (max_num_timeout)
        self.submitit_handler(self.signal, None)
