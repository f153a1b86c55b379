"""Hydra entry point: compose the config, build every plugin from its `_target_`, run Lightning.

    python -m rlvr.train                                   # embedded default: tiny model, arithmetic, CPU
    python -m rlvr.train advantage=sgpo judge=rule guidance=adaptive
    python -m rlvr.train -m optimizer.lr=1e-6,3e-6 seed=1,2
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.experimental.callback import Callback as HydraCallback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from rlvr import slurm
from rlvr.algorithm import AlgorithmConfig
from rlvr.checkpoints import RUN_KEY, StepCheckpoints, StopOnSignal
from rlvr.metrics import METRICS_FILE
from rlvr.module import RLVRModule
from rlvr.optim import apply_optimizer_changes
from rlvr.options import check
from rlvr.state import AtomicCheckpointIO, disk_errors

# rlvr.train itself decides about an existing metrics.csv (refuses, moves it aside, or resumes it): never news.
warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted")
log = logging.getLogger(__name__)
PENDING = ".hydra-pending"  # where Hydra writes the config of an attempt in a directory that holds a run
# Settings that change what a step or the run's length is, or what the checkpoint's weights and optimizer state are:
# a resume cannot take a new value (model.lora stands for each of its settings).
FIXED_ON_RESUME = ("algorithm.ppo_epochs", "algorithm.mini_batches", "model.name_or_path", "model.lora", "model.dtype",
                   "optimizer._target_", "scheduler._target_")


def check_run_options(cfg: DictConfig, algorithm: AlgorithmConfig) -> None:
    """What can be checked before any model is loaded."""
    check("seed", cfg.seed, integer=True, low=0)
    check("optimizer.lr", cfg.optimizer.get("lr"), low=0, low_open=True)  # lr 0 trains nothing
    if "weight_decay" in cfg.optimizer:
        check("optimizer.weight_decay", cfg.optimizer.weight_decay, low=0)
    if "betas" in cfg.optimizer:
        betas = cfg.optimizer.betas
        if not (OmegaConf.is_list(betas) or isinstance(betas, (list, tuple))) or len(betas) != 2:
            raise ValueError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}")
        for beta in betas:
            check("optimizer.betas", beta, low=0, high=1, high_open=True)
    check("rollout.num_generations", cfg.rollout.get("num_generations"), integer=True, low=1)
    check("rollout.temperature", cfg.rollout.get("temperature"), low=0)
    if not isinstance(cfg.get("export_policy"), bool):
        raise ValueError(f"export_policy must be true or false, got {cfg.get('export_policy')!r}")
    if cfg.get("ckpt_path") is not None and not isinstance(cfg.ckpt_path, str):
        raise ValueError(f"ckpt_path must be a checkpoint's path, auto or null, got {cfg.ckpt_path!r}")
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


def checked_algorithm(cfg: DictConfig) -> AlgorithmConfig:
    """The algorithm settings, with every run-level option checked (check_run_options)."""
    algorithm = AlgorithmConfig(**OmegaConf.to_container(cfg.algorithm, resolve=True))
    check_run_options(cfg, algorithm)
    return algorithm


def build_module(cfg: DictConfig, algorithm: AlgorithmConfig | None = None) -> RLVRModule:
    algorithm = algorithm or checked_algorithm(cfg)
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
    """Lightning counts optimizer steps in manual optimisation; rlvr's config counts roll-out steps. Checkpoints are
    rlvr's StepCheckpoints (in `callbacks`), so Lightning adds no ModelCheckpoint of its own."""
    return instantiate(
        cfg.trainer,
        max_steps=cfg.max_steps * optimizer_steps_per_rollout,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        logger=instantiate(cfg.logger, save_dir=str(run_dir)),
        callbacks=list(callbacks or []),
        enable_checkpointing=False,
        plugins=[AtomicCheckpointIO(), *slurm.lightning_plugins()],
        default_root_dir=str(run_dir),
    )


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def launch_rank() -> int:
    """The process's global rank as its launcher set it (torchrun: RANK; Slurm's srun: SLURM_PROCID), before Lightning runs."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def attempt_is_pending() -> bool:
    """Hydra writes this attempt's config to PENDING (RunDirGuard): the run directory already holds a run's .hydra/."""
    return HydraConfig.initialized() and HydraConfig.get().output_subdir == PENDING


def resume_checkpoint(ckpt_path: str | None, run_dir: Path, restarted: bool = False) -> str | None:
    """The checkpoint to resume from; "auto": the run directory's own last.ckpt, and without one a fresh run, the
    directory's earlier files moved aside to <run dir>.partial<N> (a run stopped before its first checkpoint).
    A fresh run (ckpt_path=null) refuses a run directory that already holds a run: it would overwrite its metrics and
    checkpoints. A restarted (requeued) Slurm job is the same run again: its own last.ckpt wins over ckpt_path, and
    without one it starts over in its directory. Only global rank 0 moves files: the other ranks run the same code at
    the same time."""
    last = last_checkpoint(run_dir)
    if restarted and last.is_file():
        return str(last)
    held = [p.name for p in (run_dir / METRICS_FILE, run_dir / "checkpoints") if p.exists()]
    if ckpt_path == "auto":
        if last.is_file():
            return str(last)
        if held and not restarted and launch_rank() == 0:
            move_aside(run_dir)
        return None
    if ckpt_path is None and held and not restarted:
        raise FileExistsError(f"run directory {run_dir} already holds a run ({', '.join(held)}); a fresh run would overwrite it. "
                              "Resume it with ckpt_path=auto, or give the new run its own hydra.run.dir")
    return ckpt_path


def move_aside(run_dir: Path) -> Path:
    """Move what an earlier attempt left in `run_dir` to a new <run dir>.partial<N>, as rlvr.compare does (Hydra's
    train.log stays: this run logs to it; this attempt's own config, if still pending, stays too)."""
    number = 1
    while run_dir.with_name(f"{run_dir.name}.partial{number}").exists():
        number += 1
    aside = run_dir.with_name(f"{run_dir.name}.partial{number}")
    aside.mkdir()
    pending = attempt_is_pending()  # then .hydra/ is the earlier attempt's: it goes aside too
    for entry in sorted(run_dir.iterdir()):
        if entry.name == "train.log" or entry.name == PENDING or (entry.name == ".hydra" and not pending):
            continue
        entry.rename(aside / entry.name)
    log.warning(f"{run_dir} holds no checkpoint (the run stopped before its first one): its files are moved to {aside}; starting afresh")
    return aside


def read_checkpoint(ckpt_path: str) -> dict[str, Any]:
    """A checkpoint's step and rlvr's record of the run (config, the step's metrics rows), read memory-mapped: a 7B
    checkpoint is not loaded whole for this. A missing, empty or corrupt file is an error naming it and the others."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
        return {"global_step": int(checkpoint["global_step"]), **checkpoint.get(RUN_KEY, {})}
    except Exception as err:
        others = sorted(p.name for p in Path(ckpt_path).parent.glob("*.ckpt") if p != Path(ckpt_path))
        raise ValueError(f"ckpt_path: checkpoint {ckpt_path} cannot be read ({type(err).__name__}: {err}); other checkpoints there: "
                         f"{', '.join(others) or 'none'} (resume from one with ckpt_path=<path>)") from err


def checkpoint_step(ckpt_path: str) -> int:
    """The optimizer step a checkpoint was saved at (see read_checkpoint)."""
    return read_checkpoint(ckpt_path)["global_step"]


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        return {k: v for key, value in config.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: config}


def config_changes(saved: dict[str, Any] | None, config: dict[str, Any], ckpt_path: str) -> dict[str, tuple[Any, Any]]:
    """Settings that differ from the checkpoint's run, as {key: (then, now)}. One that changes what a step is
    (FIXED_ON_RESUME) is refused, naming it; the others take effect: each step reads algorithm.* anew, and changed
    optimizer.* values are applied to the restored optimizer (a new lr rescales the schedule)."""
    if saved is None:
        return {}  # a checkpoint written before rlvr recorded its config
    then, now = flat(saved), flat(config)
    ignored = ("ckpt_path",)
    changes = {k: (then.get(k), now.get(k)) for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k) and k not in ignored}
    fixed = [f"{k}: {a!r} in the checkpoint's run, {b!r} now" for k, (a, b) in changes.items()
             if any(k == f or k.startswith(f + ".") for f in FIXED_ON_RESUME)]
    if fixed:
        raise ValueError(f"resuming {ckpt_path}: {'; '.join(fixed)}. These set the optimizer steps of each training step, the "
                         "model's weights or the optimizer's state, so the checkpoint would not fit: resume with the checkpoint's "
                         "values, or start a new run")
    if changes:
        log.warning("resuming with settings changed since the checkpoint: " + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    return changes


def metric_rows(file: Path) -> list[dict[str, str]]:
    """metrics.csv's rows; a last row cut short (the process was killed while writing it: no line end, or too few
    cells) is dropped with a warning, any other malformed row is an error naming the file and line. Without the file,
    the rows a resume staged (continue_metrics) before it was killed."""
    if not file.is_file():
        file = continued(file)
    if not file.is_file():
        return []
    text = file.read_text()
    lines = list(csv.reader(text.splitlines()))
    if not lines:
        return []
    header, rows = lines[0], []
    for number, cells in enumerate(lines[1:], start=2):
        last = number == len(lines)
        if last and not text.endswith("\n") or len(cells) != len(header) or not cells[header.index("step")].isdigit():
            if last:
                log.warning(f"{file}, line {number} is cut short (the run was stopped while writing it): it is dropped")
                break
            raise ValueError(f"{file}, line {number}: {len(cells)} cells for {len(header)} columns (or no step): repair or remove the line")
        rows.append(dict(zip(header, cells)))
    return rows


def metrics_before(saved: dict[str, Any] | None, run_dir: Path, steps_per_rollout: int) -> list[dict[str, str]]:
    """The rows of the run directory's metrics.csv up to the checkpoint's step (later ones are logged again). The
    checkpoint's own step's rows (training and any validation due), if the file lost them, come from its record."""
    if saved is None:
        return []
    record = saved.get("record") or {"step": saved["global_step"] // steps_per_rollout, "rows": []}
    step = record["step"]  # roll-out steps; a row's step column counts from 0
    rows = metric_rows(run_dir / METRICS_FILE)
    kept, at = [r for r in rows if int(r["step"]) < step - 1], [r for r in rows if int(r["step"]) == step - 1]
    if len(at) < len(record["rows"]):
        log.warning(f"{run_dir / METRICS_FILE} lacks rows of step {step}: the checkpoint's record puts them back")
        at = record["rows"]
    return kept + at


def continued(metrics_file: Path) -> Path:
    """Where continue_metrics stages the earlier rows while the CSV logger removes metrics.csv."""
    return metrics_file.with_name(f".{metrics_file.name}.continued")


def continue_metrics(logger: Any, rows: list[dict[str, str]]) -> None:
    """Put the earlier rows back in front of what the resumed run logs. The CSV logger deletes the file it finds: the
    rows are written to a staged file first and renamed in after, and a kill between the two leaves the staged file,
    which metric_rows reads. Rank 0 only: the others' logger has no file (a resumed DDP run failed here on rank 1)."""
    if rows and isinstance(logger, CSVLogger) and rank_zero_only.rank == 0:
        keys = list(dict.fromkeys(key for row in rows for key in row))
        staged = continued(Path(logger.log_dir) / METRICS_FILE)
        with open(staged, "w", newline="") as handle:
            table = csv.DictWriter(handle, fieldnames=keys, restval="")
            table.writeheader()
            table.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        writer = logger.experiment  # created here: it removes the old file
        writer.metrics_keys = keys
        os.replace(staged, writer.metrics_file_path)


def latest_values(rows: list[dict[str, str]]) -> dict[str, float]:
    """Each metric's last logged value in metrics.csv rows."""
    latest = {}
    for row in rows:
        latest.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("step", "epoch")})
    return latest


class ResumedOptimizer(pl.Callback):
    """Applies changed optimizer.* settings to the optimizer a resume restored (Lightning restores it before this)."""

    def __init__(self, changes: dict[str, tuple[Any, Any]]):
        self.changes = {k.removeprefix("optimizer."): v for k, v in changes.items() if k.startswith("optimizer.")}

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.changes:
            schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
            apply_optimizer_changes(trainer.optimizers[0], schedulers[0] if schedulers else None, self.changes)


def accept_attempt(run_dir: Path) -> None:
    """This attempt passed every check: its config (written to PENDING by Hydra) becomes the run's .hydra/."""
    pending = run_dir / PENDING
    if attempt_is_pending() and pending.is_dir() and rank_zero_only.rank == 0:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        for file in pending.iterdir():
            os.replace(file, run_dir / ".hydra" / file.name)
        pending.rmdir()


def export_policy(module: RLVRModule, run_dir: Path) -> None:
    """The final policy as a plain HF model folder, written beside it and renamed into place: never partial."""
    policy, target, staged = module.policy, run_dir / "policy", run_dir / ".policy.partial"
    if hasattr(policy, "merge_and_unload"):  # LoRA: fold the adapters in, so the folder is a plain HF model
        policy = policy.merge_and_unload()
    shutil.rmtree(staged, ignore_errors=True)
    with disk_errors("the exported policy", staged):
        policy.save_pretrained(staged)
        module.tokenizer.save_pretrained(staged)
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)


def signal_callbacks(stop: StopOnSignal, requeue: slurm.RequeueOnSignal | None) -> list[pl.Callback]:
    """Requeue before stop: in a Slurm job the time-limit signal requeues the job, whatever SIGTERM comes with it."""
    return [requeue, stop] if requeue else [stop]


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Run training; returns each metric's latest value (the run's earlier rows, validation before training, fit)."""
    # First: a signal may come while the model loads. Slurm's is acted on at the first step; SIGTERM / SIGINT exit.
    requeue = slurm.RequeueOnSignal().install() if slurm.submitit_job() else None
    stop = StopOnSignal(defer_to=requeue).install()
    algorithm = checked_algorithm(cfg)  # before anything acts on an option or touches the run directory
    pl.seed_everything(cfg.seed, workers=True)
    restarted = slurm.restarted()
    ckpt_path = resume_checkpoint(cfg.ckpt_path, run_dir, restarted=restarted)
    if restarted:
        log.info(f"Slurm restart {os.environ['SLURM_RESTART_COUNT']}: " + (f"resuming from {ckpt_path}" if ckpt_path else "no checkpoint yet, starting over"))
    # The run's own settings: a config composed with Hydra's node (tests, launchers) resolves that node only in a job.
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    saved = read_checkpoint(ckpt_path) if ckpt_path else None  # also checks the checkpoint before any model loads
    changes = config_changes(saved.get("config"), config, ckpt_path) if saved else {}
    steps_per_rollout = algorithm.optimizer_steps_per_rollout
    checkpoints = StepCheckpoints(run_dir / "checkpoints", cfg.checkpoint_every * steps_per_rollout, steps_per_rollout, config)
    stop.checkpoints = checkpoints
    if requeue:
        requeue.checkpoints = checkpoints
    callbacks = [checkpoints, ResumedOptimizer(changes), *signal_callbacks(stop, requeue)]
    history = metrics_before(saved, run_dir, steps_per_rollout)
    latest = latest_values(history)
    trainer = build_trainer(cfg, run_dir, steps_per_rollout, callbacks=callbacks)  # Lightning checks its arguments now
    module = build_module(cfg, algorithm)
    accept_attempt(run_dir)
    continue_metrics(trainer.logger, history)
    if ckpt_path is None:
        trainer.validate(module, verbose=False)  # the "before" point of the val/accuracy curve (greedy: no RNG drawn)
        latest.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    trainer.fit(module, ckpt_path=ckpt_path)
    if stop.exit_status:  # signalled during the last step: it is saved; the export waits for the resume
        raise SystemExit(stop.exit_status)
    latest.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.export_policy and trainer.is_global_zero:
        export_policy(module, run_dir)
    return latest


class RunDirGuard(HydraCallback):
    """Hydra callback (train.yaml's hydra.callbacks), run before Hydra writes anything. In a directory that already
    holds a run's .hydra/, this attempt's config goes to PENDING until the run has passed its checks (train ->
    accept_attempt): a refused run leaves the run's own config as it was. A PENDING left by an earlier refused attempt
    is removed first: it is not this attempt's. (Hydra turns a callback's exception into a warning, so refusals are
    made in main.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir, subdir = Path(str(config.hydra.run.dir)), config.hydra.output_subdir
        if launch_rank() == 0:
            shutil.rmtree(run_dir / PENDING, ignore_errors=True)
        if subdir is not None and (run_dir / str(subdir) / "config.yaml").is_file():
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = PENDING


def check_launcher(hydra_cfg: DictConfig) -> None:
    """A Slurm launcher launches only a multirun: a plain run would train on this machine (the login node)."""
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_", default=""))
    if hydra_cfg.mode == RunMode.RUN and "submitit" in launcher.lower():
        name = hydra_cfg.runtime.choices.get("hydra/launcher")
        raise ValueError(f"hydra/launcher={name} launches only a multirun: add -m (python -m rlvr.train -m hydra/launcher={name} "
                         "...); without it this run would train here, on this machine, not in a Slurm job")


@hydra.main(version_base="1.3", config_path="pkg://rlvr.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns what a Hydra sweeper optimises: the latest value of sweep_metric (default val/accuracy)."""
    try:
        check_launcher(HydraConfig.get())
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
