"""Hydra entry point: compose the config, build every plugin from its `_target_`, run Lightning.

    python -m rlvr.train                                   # embedded default: tiny model, arithmetic, CPU
    python -m rlvr.train advantage=sgpo judge=rule guidance=adaptive
    python -m rlvr.train -m optimizer.lr=1e-6,3e-6 seed=1,2
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from rlvr import slurm
from rlvr.algorithm import AlgorithmConfig
from rlvr.metrics import METRICS_FILE
from rlvr.module import RLVRModule
from rlvr.options import check
from rlvr.state import AtomicCheckpointIO

# Checkpoints hold the state after the step's update, which is what resuming needs.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
log = logging.getLogger(__name__)


def check_run_options(cfg: DictConfig, algorithm: AlgorithmConfig) -> None:
    """What can be checked before any model is loaded."""
    for key in ("max_steps", "val_every", "checkpoint_every"):
        check(key, cfg[key], integer=True, low=1)
        if key in cfg.trainer:
            raise ValueError(f"trainer.{key} is not a setting: rlvr's {key} is top-level and counts training steps (write {key}=...)")
    if str(cfg.trainer.get("precision")).startswith("16"):
        raise ValueError("precision 16-mixed is not supported (its loss scaling would bypass gradient clipping): use bf16-mixed")
    try:  # the optimizer and schedule check their own numbers (a negative lr...): try them on a dummy parameter now
        instantiate(cfg.scheduler)(instantiate(cfg.optimizer)([torch.zeros(1, requires_grad=True)]), total_steps=cfg.max_steps)
    except ValueError as err:
        raise ValueError(f"optimizer / scheduler settings: {err}") from err
    # Settings under which every group-relative advantage is 0: the run would train nothing.
    if cfg.rollout.num_generations < 2 or cfg.rollout.temperature == 0:
        raise ValueError(f"rollout.num_generations={cfg.rollout.num_generations}, rollout.temperature={cfg.rollout.temperature}: a group "
                         "needs >= 2 roll-outs that can differ (temperature > 0), or every advantage is 0 and nothing is learnt")
    samples = algorithm.prompts_per_step * cfg.rollout.num_generations
    if algorithm.mini_batches > samples:
        raise ValueError(f"algorithm.mini_batches={algorithm.mini_batches} exceeds the {samples} samples of a roll-out batch")


def build_module(cfg: DictConfig) -> RLVRModule:
    algorithm = AlgorithmConfig(**OmegaConf.to_container(cfg.algorithm, resolve=True))
    check_run_options(cfg, algorithm)
    return RLVRModule(
        model=instantiate(cfg.model),
        data=instantiate(cfg.data),
        rollout=instantiate(cfg.rollout),
        reward=instantiate(cfg.reward),
        advantage=instantiate(cfg.advantage),
        guidance=instantiate(cfg.guidance),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        algorithm=algorithm,
        max_steps=cfg.max_steps,
        seed=cfg.seed,
    )


def build_trainer(cfg: DictConfig, run_dir: Path, optimizer_steps_per_rollout: int, callbacks: list | None = None) -> pl.Trainer:
    # Lightning counts optimizer steps in manual optimisation; rlvr's config counts roll-out steps.
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint_every * optimizer_steps_per_rollout,
        save_top_k=-1,
        save_last=True,
        enable_version_counter=False,  # a resumed run overwrites its own last.ckpt, never writes last-v1.ckpt beside it
    )
    return instantiate(
        cfg.trainer,
        max_steps=cfg.max_steps * optimizer_steps_per_rollout,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        logger=instantiate(cfg.logger, save_dir=str(run_dir)),
        callbacks=[*(callbacks or []), checkpoint],
        plugins=[AtomicCheckpointIO(), *slurm.lightning_plugins()],
        default_root_dir=str(run_dir),
    )


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def resume_checkpoint(ckpt_path: str | None, run_dir: Path, restarted: bool = False) -> str | None:
    """The checkpoint to resume from; "auto": the run directory's own last.ckpt (none yet: a fresh run).
    A fresh run refuses a run directory that already holds a run: it would overwrite its metrics and checkpoints.
    A restarted (requeued) Slurm job is the same run again: its own last.ckpt wins over ckpt_path, and without
    one it starts over in its directory."""
    last = last_checkpoint(run_dir)
    if restarted and last.is_file():
        return str(last)
    if ckpt_path == "auto":
        ckpt_path = str(last) if last.is_file() else None
    held = [p.name for p in (run_dir / METRICS_FILE, run_dir / "checkpoints") if p.exists()]
    if ckpt_path is None and held and not restarted:
        raise FileExistsError(f"run directory {run_dir} already holds a run ({', '.join(held)}); a fresh run would overwrite it. "
                              "Resume it with ckpt_path=auto, or give the new run its own hydra.run.dir")
    return ckpt_path


def checkpoint_step(ckpt_path: str) -> int:
    """The optimizer step a checkpoint was saved at; a missing, empty or corrupt file is an error naming it and
    the other checkpoints beside it (read memory-mapped: a 7B checkpoint is not loaded whole for this)."""
    try:
        return int(torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception as err:
        others = sorted(p.name for p in Path(ckpt_path).parent.glob("*.ckpt") if p != Path(ckpt_path))
        raise ValueError(f"checkpoint {ckpt_path} cannot be read ({type(err).__name__}: {err}); other checkpoints there: "
                         f"{', '.join(others) or 'none'} (resume from one with ckpt_path=<path>)") from err


def metrics_before(ckpt_path: str | None, run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run directory's metrics.csv logged before the checkpoint (later ones are logged again)."""
    if ckpt_path is None:
        return []
    step = checkpoint_step(ckpt_path)  # also checks the checkpoint before any model loads
    file = run_dir / METRICS_FILE
    if not file.is_file():
        return []
    with file.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) < step]


def continue_metrics(logger: Any, rows: list[dict[str, str]]) -> None:
    """Put the earlier rows back in front of what the resumed run logs (the CSV logger deletes the file it finds).
    Rank 0 only: the others' logger has no file (a resumed DDP run failed here on rank 1)."""
    if rows and isinstance(logger, CSVLogger) and rank_zero_only.rank == 0:
        writer = logger.experiment  # created here: it removes the old file
        writer.metrics_keys = list(rows[0])
        with open(writer.metrics_file_path, "w", newline="") as handle:
            table = csv.DictWriter(handle, fieldnames=writer.metrics_keys)
            table.writeheader()
            table.writerows(rows)


def latest_values(rows: list[dict[str, str]]) -> dict[str, float]:
    """Each metric's last logged value in metrics.csv rows."""
    latest = {}
    for row in rows:
        latest.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("step", "epoch")})
    return latest


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Run training; returns each metric's latest value (the run's earlier rows, validation before training, fit)."""
    # First: Slurm's signal may come while the model loads; it is acted on at the first step's end.
    requeue = slurm.RequeueOnSignal(last_checkpoint(run_dir)).install() if slurm.submitit_job() else None
    pl.seed_everything(cfg.seed, workers=True)
    restarted = slurm.restarted()
    ckpt_path = resume_checkpoint(cfg.ckpt_path, run_dir, restarted=restarted)
    if restarted:
        log.info(f"Slurm restart {os.environ['SLURM_RESTART_COUNT']}: " + (f"resuming from {ckpt_path}" if ckpt_path else "no checkpoint yet, starting over"))
    history = metrics_before(ckpt_path, run_dir)
    latest = latest_values(history)
    module = build_module(cfg)
    trainer = build_trainer(cfg, run_dir, module.algorithm.optimizer_steps_per_rollout, callbacks=[requeue] if requeue else [])
    continue_metrics(trainer.logger, history)
    if ckpt_path is None:
        trainer.validate(module, verbose=False)  # the "before" point of the val/accuracy curve (greedy: no RNG drawn)
        latest.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    trainer.fit(module, ckpt_path=ckpt_path)
    latest.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.export_policy and trainer.is_global_zero:
        policy = module.policy
        if hasattr(policy, "merge_and_unload"):  # LoRA: fold the adapters in, so the folder is a plain HF model
            policy = policy.merge_and_unload()
        policy.save_pretrained(run_dir / "policy")
        module.tokenizer.save_pretrained(run_dir / "policy")
    return latest


@hydra.main(version_base="1.3", config_path="pkg://rlvr.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns what a Hydra sweeper optimises: the latest value of sweep_metric (default val/accuracy)."""
    try:
        metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Exception:
        if slurm.submitit_job():
            slurm.fail_job()  # exit 1: FAILED in Slurm, the traceback in the job's log
        raise
    return sweep_value(metrics, cfg.get("sweep_metric", "val/accuracy"))


def sweep_value(metrics: dict[str, float], name: str) -> float | None:
    if name not in metrics:
        log.warning(f"sweep_metric={name!r} was never logged; a sweeper gets None. Logged: {', '.join(sorted(metrics))}")
    return metrics.get(name)


if __name__ == "__main__":
    # Run the importable module's main, not __main__'s: submitit pickles the task for a Slurm job, and what main
    # calls is then imported there, not copied by value (a job's traceback names the real files and lines).
    from rlvr.train import main as importable_main

    importable_main()
