"""Slurm: the launcher preset (`hydra/launcher=slurm`), and sweeps on a real Slurm.

The Slurm tests need a cluster: `eval "$(scripts/slurm_local.sh start)"` starts one on localhost (root; .ci/slurm.sh
does it in CI). Without `sbatch`, or without a controller that answers, they skip; with RLVR_REQUIRE_SLURM=1 (CI)
they fail instead. Each job is the tiny default model for a few steps on 1 CPU.
"""

import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from safetensors.torch import load_file

import rlvr.slurm  # noqa: F401  (registers the preset's resolvers)
from rlvr.metrics import read_metrics, series
from rlvr.train import main, resume_checkpoint, sweep_value

ROOT = Path(__file__).resolve().parents[1]
TINY = ["algorithm.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=48", "data.val_size=8"]
# 1 CPU and 2 GB a job: two jobs run side by side on a 2-core node
ON_ONE_CPU = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_per_cpu=2G"]


def launcher(*overrides: str) -> OmegaConf:
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


# --- the preset (no cluster needed) ---

def test_preset_requests_gpus_and_tasks_as_the_trainer_uses_them():
    cpu, gpu, ddp = launcher(), launcher("trainer=gpu"), launcher("trainer=ddp", "trainer.devices=4")
    assert (cpu.gpus_per_node, cpu.tasks_per_node) == (None, 1)  # trainer=default runs on CPU: no GPU requested
    assert (gpu.gpus_per_node, gpu.tasks_per_node) == (1, 1)
    assert (ddp.gpus_per_node, ddp.tasks_per_node) == (4, 4)  # one task per rank, as Lightning expects under Slurm
    assert cpu._target_.endswith("submitit_launcher.SlurmLauncher") and cpu.partition is None
    assert (cpu.timeout_min, cpu.signal_delay_s, cpu.max_num_timeout) == (240, 300, 10)
    assert launcher("hydra.launcher.timeout_min=10").signal_delay_s == 60  # never a signal due before the job starts
    assert launcher("hydra.launcher.partition=gpu").partition == "gpu"


def test_preset_refuses_all_devices_naming_the_fix():
    with pytest.raises(InterpolationResolutionError, match=r"trainer.devices=-1 cannot size a Slurm job.*trainer.devices=4"):
        _ = launcher("trainer=ddp").tasks_per_node


def test_a_restarted_job_resumes_its_own_last_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "metrics.csv").write_text("step\n0\n")
    # started over after a requeue before any checkpoint: its own directory, no refusal
    assert resume_checkpoint(None, tmp_path, restarted=True) is None
    with pytest.raises(FileExistsError):
        resume_checkpoint(None, tmp_path)  # a fresh run still refuses it
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    # its own last.ckpt wins over the checkpoint the run first started from
    assert resume_checkpoint("/elsewhere/step000100.ckpt", tmp_path, restarted=True) == str(last)


@pytest.mark.slow
def test_what_a_sweeper_gets_includes_the_validation_before_training(tmp_path):
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "max_steps=1", "val_every=100", "export_policy=false"], return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    try:
        value = main(cfg)  # no validation during training: the one before it
    finally:
        HydraConfig.instance().cfg = None
    assert value == pytest.approx(series(read_metrics(tmp_path), "val/accuracy")[-1])


def test_sweep_metric_picks_another_metric_and_names_the_logged_ones_when_absent(caplog):
    metrics = {"val/accuracy": 0.5, "train/reward": 0.25}
    assert sweep_value(metrics, "train/reward") == 0.25
    assert sweep_value(metrics, "val/acc") is None
    assert "sweep_metric='val/acc' was never logged" in caplog.text and "train/reward, val/accuracy" in caplog.text


# --- on a real Slurm ---

@pytest.fixture(scope="module")
def slurm():
    """The environment for a cluster that answers; SLURM_CONF defaults to scripts/slurm_local.sh's."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    local = Path(os.environ.get("RLVR_SLURM_DIR", "/tmp/rlvr-slurm")) / "slurm.conf"
    if "SLURM_CONF" not in env and local.is_file():
        env["SLURM_CONF"] = str(local)
    required = os.environ.get("RLVR_REQUIRE_SLURM") == "1"
    if shutil.which("sbatch") is None:
        reason = "no sbatch on PATH (start a local Slurm: scripts/slurm_local.sh start)"
        pytest.fail(reason) if required else pytest.skip(reason)
    ping = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or "idle" not in ping.stdout and "mix" not in ping.stdout:
        reason = f"sbatch is here but no Slurm node is up (sinfo: {(ping.stderr or ping.stdout).strip()[:200]}); start one: scripts/slurm_local.sh start"
        pytest.fail(reason) if required else pytest.skip(reason)
    return env


def sweep(tmp_path: Path, env: dict, *overrides: str, name: str = "sweep", wait: bool = True):
    cmd = [sys.executable, "-m", "rlvr.train", "-m", *ON_ONE_CPU, *TINY, *overrides, f"hydra.sweep.dir={tmp_path / name}"]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def job_ids(sweep_dir: Path) -> list[str]:
    """Slurm ids of a sweep's jobs in sweep order, from submitit's folders: array tasks 123_0, 123_1, ...; a sweep of
    one point is a plain job, 123."""
    jobs = [p.name for p in (sweep_dir / ".submitit").iterdir() if (p / f"{p.name}_submitted.pkl").is_file()]
    return sorted(jobs, key=lambda j: int(j.split("_")[-1]) if "_" in j else 0)


def sacct(job: str, env: dict) -> list[tuple[str, str]]:
    """(State, ExitCode) of every run of a job, requeued runs included, oldest first."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "--duplicates", "-j", job, "-o", "State,ExitCode"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def settled(job: str, env: dict, timeout: float = 60) -> list[tuple[str, str]]:
    """sacct's runs of a job once the last one has ended (a job's result file can come before Slurm's record)."""
    deadline = time.time() + timeout
    while (runs := sacct(job, env)) and runs[-1][0] in ("PENDING", "RUNNING", "COMPLETING") and time.time() < deadline:
        time.sleep(1)
    return runs


def returned(sweep_dir: Path, job: str):
    """What the launcher got back from a job: submitit's result file, ("success", Hydra's JobReturn)."""
    outcome, result = pickle.loads((sweep_dir / ".submitit" / job / f"{job}_0_result.pkl").read_bytes())
    assert outcome == "success", result
    return result.return_value


def test_sweep_of_two_seeds_runs_as_slurm_jobs_and_returns_their_results(tmp_path, slurm):
    result = sweep(tmp_path, slurm, "max_steps=2", "val_every=100", "export_policy=false", "seed=1,2")
    assert result.returncode == 0, result.stderr[-4000:]
    sweep_dir = tmp_path / "sweep"
    jobs = job_ids(sweep_dir)
    assert len(jobs) == 2
    for number, job in enumerate(jobs):
        assert settled(job, slurm) == [("COMPLETED", "0:0")]
        rows = read_metrics(sweep_dir / str(number))
        assert max(series(rows, "train/prompts_consumed")) == 4  # 2 steps x 2 prompts
        # no validation ran during training: the sweeper gets the one before it
        assert returned(sweep_dir, job) == pytest.approx(series(rows, "val/accuracy")[-1])


def test_a_failing_job_exits_non_zero_is_failed_in_slurm_and_the_sweep_names_its_error(tmp_path, slurm):
    result = sweep(tmp_path, slurm, "max_steps=1", "val_every=100", "export_policy=false", "optimizer.lr=1e-3,-1")  # the second job's lr is invalid
    assert result.returncode != 0
    assert "ValueError: optimizer.lr must be a number > 0, got -1" in result.stderr
    good, bad = job_ids(tmp_path / "sweep")
    assert settled(good, slurm) == [("COMPLETED", "0:0")]
    assert settled(bad, slurm) == [("FAILED", "1:0")]
    log = (tmp_path / "sweep" / ".submitit" / bad / f"{bad}_0_log.err").read_text()
    assert "optimizer.lr must be a number > 0, got -1" in log and 'File "' in log  # the traceback, in the job's own log


def seconds_per_step(tmp_path: Path, env: dict) -> float:
    """This machine's training step time for the TINY settings on one thread (a few steps, outside Slurm)."""
    run_dir = tmp_path / "calibration"
    cmd = [sys.executable, "-m", "rlvr.train", *TINY, "max_steps=8", "val_every=100", "export_policy=false", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return statistics.median(series(read_metrics(run_dir), "time/step_s")[2:])


def test_a_job_at_its_time_limit_checkpoints_requeues_and_resumes_to_the_uninterrupted_result(tmp_path, slurm):
    """A 1-minute job whose training outlasts the signal Slurm sends 10 s before its limit (Slurm checks limits every
    30 s: the signal comes 20-50 s into the job): it saves last.ckpt at a step's end, is requeued, and the requeued job
    resumes in the same run directory. Compared with the same run uninterrupted, run beside it outside Slurm."""
    steps = min(max(round(60 / seconds_per_step(tmp_path, slurm)), 60), 2000)  # ~60 s of training, whatever the machine
    run = [f"max_steps={steps}", f"val_every={steps // 4}", "optimizer.lr=1e-3", "export_policy=true"]
    straight = subprocess.Popen([sys.executable, "-m", "rlvr.train", *TINY, *run, f"hydra.run.dir={tmp_path / 'straight'}"],
                                cwd=tmp_path, env=slurm, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    launch = sweep(tmp_path, slurm, *run, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10",
                   "hydra.launcher.max_num_timeout=3", wait=False)
    sweep_dir, start, job = tmp_path / "sweep", time.time(), None
    while time.time() - start < 240:
        if job is None and (sweep_dir / ".submitit").is_dir():
            job = next(iter(job_ids(sweep_dir)), None)
        states = [state for state, _ in sacct(job, slurm)] if job else []
        if "REQUEUED" in states:
            # one requeue shows it all; a longer limit spares the test more rounds of it
            subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=5"], env=slurm, check=True)
            break
        if launch.poll() is not None or states[-1:] in (["COMPLETED"], ["FAILED"], ["TIMEOUT"]):
            pytest.fail(f"job {job} ended ({states}) without a requeue: its {steps} steps did not outlast the signal "
                        f"(20-50 s into the job)\n{launch.stdout.read()[-3000:]}")
        time.sleep(1)
    else:
        pytest.fail(f"job {job} was not requeued within 240 s")
    output, _ = launch.communicate(timeout=300)
    assert launch.returncode == 0, output[-4000:]
    _, straight_err = straight.communicate(timeout=300)
    assert straight.returncode == 0, straight_err[-4000:]

    assert [state for state, _ in settled(job, slurm)] == ["REQUEUED", "COMPLETED"]
    log = (sweep_dir / ".submitit" / job / f"{job}_0_log.out").read_text()  # both runs append to it
    assert "received SIGUSR2: saving" in log
    run_dir = sweep_dir / "0"
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in (run_dir / "train.log").read_text()

    a, b = read_metrics(tmp_path / "straight"), read_metrics(run_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # one metrics.csv, continued, no step twice or missing
    for key in ("train/loss", "train/reward", "val/accuracy", "train/prompts_consumed"):
        assert series(a, key) == pytest.approx(series(b, key), rel=1e-5, abs=1e-7), key
    wa = load_file(tmp_path / "straight" / "policy" / "model.safetensors")
    wb = load_file(run_dir / "policy" / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert returned(sweep_dir, job) == pytest.approx(series(a, "val/accuracy")[-1])
