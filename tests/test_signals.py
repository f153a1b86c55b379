"""Signals, kills and the run directory's record: real `python -m rlvr.train` runs of the tiny default, and the
pieces behind them (resume config comparison, metrics.csv repair, a full disk) without a model."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from omegaconf import OmegaConf

from rlvr.checkpoints import RUN_KEY, StopOnSignal
from rlvr.slurm import RequeueOnSignal
from rlvr.metrics import read_metrics, series
from rlvr.optim import apply_optimizer_changes, warmup_cosine_schedule
from rlvr.state import AtomicCheckpointIO, disk_errors
from rlvr.train import PENDING, RunDirGuard, accept_attempt, config_changes, metric_rows, resume_checkpoint, signal_callbacks

FAST = ["algorithm.prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=48", "data.val_size=8",
        "optimizer.lr=1e-3"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rlvr.train", *FAST, *overrides, f"hydra.run.dir={run_dir}"]


def run(run_dir: Path, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command(run_dir, *overrides), cwd=run_dir.parent, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def train_rows(run_dir: Path) -> int:
    return len(series(read_metrics(run_dir), "train/loss")) if (run_dir / "metrics.csv").is_file() else 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_in_progress_exports_nothing_and_exits_128_plus_it(tmp_path, sig):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(command(run_dir, "max_steps=200", "checkpoint_every=100", "val_every=2"), cwd=tmp_path,
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while train_rows(run_dir) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + sig, stderr[-3000:]
    assert not (run_dir / "policy").exists() and not (run_dir / ".policy.partial").exists()  # nothing exported
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    steps = train_rows(run_dir)
    assert checkpoint["global_step"] == steps >= 2  # the step in progress finished, was logged and saved
    record = checkpoint[RUN_KEY]["record"]
    assert record["step"] == steps and any(row["train/loss"] for row in record["rows"])
    if steps % 2 == 0:  # a validation was due at the saved step: written before the checkpoint, and recorded
        assert any(row["val/accuracy"] for row in record["rows"])
    assert checkpoint[RUN_KEY]["config"]["max_steps"] == 200
    if sig == signal.SIGINT:
        return
    # The run directory's record: a refused run leaves its .hydra/ as it was; a resume continues it.
    config = (run_dir / ".hydra" / "config.yaml").read_bytes()
    refused = run(run_dir, "max_steps=200", "checkpoint_every=100", "val_every=2", "ckpt_path=auto", "algorithm.ppo_epochs=2", ok=False)
    assert refused.returncode != 0 and "algorithm.ppo_epochs: 1 in the checkpoint's run, 2 now" in refused.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == config
    run(run_dir, f"max_steps={steps + 1}", "checkpoint_every=100", "val_every=2", "ckpt_path=auto", "optimizer.lr=2e-3")
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(steps + 1))  # nothing lost, nothing doubled
    assert (run_dir / "policy" / "model.safetensors").is_file()
    assert "optimizer.lr=2e-3" in (run_dir / ".hydra" / "overrides.yaml").read_text()  # the accepted attempt's config


@pytest.mark.slow
def test_a_checkpoint_holds_its_step_record_and_a_resume_puts_back_lost_rows(tmp_path):
    """The step-2 checkpoint is written after step 2's row and validation; a resume after those rows were lost (and
    a last row cut by a kill) puts them back from the checkpoint: the run's final result is not lost."""
    straight = tmp_path / "straight"
    run(straight, "max_steps=2", "checkpoint_every=2", "val_every=2", "export_policy=false")
    ckpts = straight / "checkpoints"
    assert os.stat(ckpts / "last.ckpt").st_ino == os.stat(ckpts / "step000002.ckpt").st_ino  # one file, two names
    expected = read_metrics(straight)
    assert series(expected, "val/accuracy")  # validation at step 2
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    lines = (crashed / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("step")
    kept = [line for line in lines if line.split(",")[column] != "1"]  # step 2's rows (step column 1) are gone
    assert len(kept) < len(lines) and any(line.split(",")[column] == "1" for line in lines)
    (crashed / "metrics.csv").write_text("\n".join(kept) + "\n0,0.5,1,12")  # and a row cut short
    run(crashed, "max_steps=2", "checkpoint_every=2", "val_every=2", "export_policy=false", "ckpt_path=auto")
    assert read_metrics(crashed) == expected


@pytest.mark.slow
def test_auto_without_a_checkpoint_starts_afresh_and_moves_the_old_files_aside(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 7\n")
    (run_dir / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n")
    run(run_dir, "max_steps=1", "val_every=100", "export_policy=false", "ckpt_path=auto")
    aside = tmp_path / "run.partial1"
    assert (aside / "metrics.csv").read_text() == "epoch,step,train/loss\n0,0,1.0\n"
    assert (aside / ".hydra" / "config.yaml").read_text() == "seed: 7\n"
    assert "seed: 0" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert train_rows(run_dir) == 1 and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_slurm_launcher_without_multirun_is_refused_before_anything_runs(tmp_path):
    result = run(tmp_path / "run", "hydra/launcher=slurm", "max_steps=1", ok=False)
    assert result.returncode != 0 and "hydra/launcher=slurm launches only a multirun: add -m" in result.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_a_signal_before_training_exits_at_once_with_128_plus_it():
    stop = StopOnSignal()
    with pytest.raises(SystemExit) as exit_info:
        stop._note(signal.SIGTERM, None)
    assert exit_info.value.code == 143
    stop = StopOnSignal()
    stop.armed = True  # training: only noted, acted on at the step's end
    stop._note(signal.SIGINT, None)
    assert stop.exit_status == 130


def test_resume_refuses_what_changes_a_step_and_names_the_rest():
    then = {"algorithm": {"ppo_epochs": 1, "mini_batches": 1, "max_grad_norm": 1.0}, "optimizer": {"lr": 1e-6}, "ckpt_path": None}
    now = {"algorithm": {"ppo_epochs": 1, "mini_batches": 2, "max_grad_norm": 1.0}, "optimizer": {"lr": 1e-6}, "ckpt_path": "auto"}
    with pytest.raises(ValueError, match=r"algorithm.mini_batches: 1 in the checkpoint's run, 2 now"):
        config_changes(then, now, "last.ckpt")
    now["algorithm"]["mini_batches"], now["optimizer"]["lr"], now["algorithm"]["max_grad_norm"] = 1, 3e-6, 0.5
    assert config_changes(then, now, "last.ckpt") == {"algorithm.max_grad_norm": (1.0, 0.5), "optimizer.lr": (1e-6, 3e-6)}


def test_a_new_lr_on_resume_rescales_the_schedule_from_the_step_reached():
    def schedule(lr):
        weight = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=0.0)
        return optimizer, warmup_cosine_schedule(optimizer, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)

    resumed, resumed_schedule = schedule(1e-3)
    fresh, fresh_schedule = schedule(4e-3)
    for _ in range(3):
        resumed_schedule.step()
        fresh_schedule.step()
    apply_optimizer_changes(resumed, resumed_schedule, {"lr": (1e-3, 4e-3), "weight_decay": (0.0, 0.1)})
    for _ in range(3):
        assert resumed.param_groups[0]["lr"] == pytest.approx(fresh.param_groups[0]["lr"], rel=1e-12)
        resumed_schedule.step()
        fresh_schedule.step()
    assert resumed.param_groups[0]["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="optimizer.momentum changed"):
        apply_optimizer_changes(resumed, resumed_schedule, {"momentum": (0.9, 0.5)})


def test_a_cut_last_row_of_metrics_csv_is_dropped_and_a_broken_earlier_row_is_named(tmp_path, caplog):
    file = tmp_path / "metrics.csv"
    file.write_text("epoch,step,train/loss\n0,0,1.5\n0,1,1.")
    assert metric_rows(file) == [{"epoch": "0", "step": "0", "train/loss": "1.5"}]
    assert "line 3 is cut short" in caplog.text
    file.write_text("epoch,step,train/loss\n0,0\n0,1,1.0\n")
    with pytest.raises(ValueError, match=r"metrics.csv, line 2: 2 cells for 3 columns"):
        metric_rows(file)


def test_a_full_disk_is_reported_as_such_naming_the_checkpoint(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    path = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OSError, match=r"writing checkpoint .*last.ckpt failed, the disk is full") as error:
        AtomicCheckpointIO().save_checkpoint({"a": 1}, path)
    assert error.value.errno == errno.ENOSPC
    assert not path.exists() and not list(path.parent.iterdir())  # no partial file left
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")))
    with pytest.raises(OSError, match="the disk is full or over quota"):
        AtomicCheckpointIO().save_checkpoint({"a": 1}, path)


def test_a_fresh_run_still_refuses_a_directory_holding_a_run(tmp_path):
    (tmp_path / "metrics.csv").write_text("step\n0\n")
    with pytest.raises(FileExistsError, match="Resume it with ckpt_path=auto"):
        resume_checkpoint(None, tmp_path)


def test_a_second_signal_while_a_stop_is_pending_exits_at_once():
    stop = StopOnSignal()
    stop.armed = True
    stop._note(signal.SIGTERM, None)  # the first waits for the step's end
    with pytest.raises(SystemExit) as exit_info:
        stop._note(signal.SIGINT, None)
    assert exit_info.value.code == 130


class FakeCheckpoints:
    last = Path("checkpoints/last.ckpt")

    def __init__(self):
        self.saved = []

    def save(self, trainer, last=False):
        self.saved.append(trainer.global_step)


class FakeTrainer:
    """What the signal callbacks read of a trainer: one rank, so a decision is this rank's own."""
    global_step, is_global_zero = 3, True

    class strategy:
        @staticmethod
        def reduce_boolean_decision(decision, all=True):
            return decision


def test_in_a_slurm_job_the_time_limit_signal_requeues_and_a_sigterm_after_it_is_passed_over():
    checkpoints, requeued = FakeCheckpoints(), []
    requeue = RequeueOnSignal(checkpoints, sig=signal.SIGUSR2)
    requeue.submitit_handler = lambda sig, frame: (requeued.append(sig), sys.exit(0))  # submitit requeues, then exits
    stop = StopOnSignal(checkpoints, defer_to=requeue)
    stop.armed = True
    requeue._note(signal.SIGUSR2, None)
    stop._note(signal.SIGTERM, None)  # Slurm's SIGTERM after USR2: no exit from the handler, no stop
    assert stop.received is None and stop.exit_status is None
    with pytest.raises(SystemExit) as exit_info:
        for callback in signal_callbacks(stop, requeue):
            callback.on_train_batch_start(FakeTrainer(), None, 0)
    assert exit_info.value.code == 0 and requeued == [signal.SIGUSR2] and checkpoints.saved == [3]
    # Requeue comes first even when a SIGTERM was noted before the time-limit signal.
    stop.defer_to, stop.received, requeued[:] = None, signal.SIGTERM, []
    with pytest.raises(SystemExit) as exit_info:
        for callback in signal_callbacks(stop, requeue):
            callback.on_train_batch_start(FakeTrainer(), None, 0)
    assert exit_info.value.code == 0 and requeued == [signal.SIGUSR2]
    # Outside Slurm a SIGTERM stops the run: last.ckpt, then 143.
    lone = StopOnSignal(checkpoints)
    lone.armed, lone.received = True, signal.SIGTERM
    with pytest.raises(SystemExit) as exit_info:
        signal_callbacks(lone, None)[0].on_train_batch_start(FakeTrainer(), None, 0)
    assert exit_info.value.code == 143


def test_a_stale_pending_config_is_removed_and_never_installed(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / PENDING).mkdir()
    (tmp_path / PENDING / "config.yaml").write_text("seed: refused\n")  # an earlier refused attempt's
    accept_attempt(tmp_path)  # not this attempt's pending folder (no Hydra run here): nothing is installed
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 0\n"
    config = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path)}, "output_subdir": ".hydra"}})
    RunDirGuard().on_run_start(config)
    assert not (tmp_path / PENDING).exists() and config.hydra.output_subdir == PENDING


def test_only_global_rank_0_moves_an_unfinished_run_aside(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("epoch,step\n0,0\n")
    for name, value in (("RANK", "1"), ("SLURM_PROCID", "2")):
        monkeypatch.delenv("RANK", raising=False)
        monkeypatch.setenv(name, value)
        assert resume_checkpoint("auto", run_dir) is None
        assert (run_dir / "metrics.csv").is_file() and not (tmp_path / "run.partial1").exists()
    monkeypatch.setenv("RANK", "0")
    assert resume_checkpoint("auto", run_dir) is None
    assert (tmp_path / "run.partial1" / "metrics.csv").is_file() and not (run_dir / "metrics.csv").exists()


@pytest.mark.parametrize("key, then, now", [("name_or_path", "a/model", "b/model"), ("dtype", "float32", "bfloat16"),
                                            ("lora", None, {"r": 8})])
def test_resume_refuses_a_changed_model(key, then, now):
    saved, config = {"model": {key: then, "gradient_checkpointing": True}}, {"model": {key: now, "gradient_checkpointing": True}}
    with pytest.raises(ValueError, match=rf"resuming last.ckpt: model.{key}.*: {then!r} in the checkpoint's run"):
        config_changes(saved, config, "last.ckpt")
    config["model"] = {key: then, "gradient_checkpointing": False}  # a setting that leaves the weights as they are
    assert config_changes(saved, config, "last.ckpt") == {"model.gradient_checkpointing": (True, False)}


@pytest.mark.parametrize("node", ["optimizer", "scheduler"])
def test_resume_refuses_another_optimizer_or_schedule(node):
    with pytest.raises(ValueError, match=rf"{node}._target_: 'a.A' in the checkpoint's run, 'b.B' now"):
        config_changes({node: {"_target_": "a.A"}}, {node: {"_target_": "b.B"}}, "last.ckpt")


@pytest.mark.parametrize("message", ["I/O error: No space left on device (os error 28)", "Disk quota exceeded"])
def test_a_full_disk_in_safetensors_is_reported_as_such(tmp_path, message):
    class SafetensorError(Exception):  # safetensors' own: not an OSError
        pass

    with pytest.raises(OSError, match=r"writing the exported policy .*policy failed, the disk is full"):
        with disk_errors("the exported policy", tmp_path / "policy"):
            raise SafetensorError(message)


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="^failed to write the file: permission denied$"):
        with disk_errors("checkpoint", tmp_path / "last.ckpt"):
            raise RuntimeError("failed to write the file: permission denied")


def test_a_kill_while_the_resumed_metrics_are_put_back_loses_no_row(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import CSVLogger

    from rlvr import train as train_module

    file, rows = tmp_path / "metrics.csv", [{"epoch": "0", "step": "0", "train/loss": "1.5"}, {"epoch": "0", "step": "1", "train/loss": "1.25"}]
    file.write_text("epoch,step,train/loss\n0,0,1.5\n0,1,1.25\n0,2,9.0\n")  # step 3's row is logged again by the resume

    def killed(*args):
        raise KeyboardInterrupt  # the kill: after the logger removed metrics.csv, before the rows were back

    monkeypatch.setattr(train_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        train_module.continue_metrics(CSVLogger(str(tmp_path), name="", version=""), rows)
    assert not file.exists() and metric_rows(file) == rows  # the next resume reads the staged rows
    monkeypatch.undo()
    logger = CSVLogger(str(tmp_path), name="", version="")
    train_module.continue_metrics(logger, rows)
    logger.log_metrics({"train/loss": 1.0}, step=2)
    logger.save()
    assert metric_rows(file) == [*rows, {"epoch": "", "step": "2", "train/loss": "1.0"}]
    assert not list(tmp_path.glob(".*"))  # no staged file left
