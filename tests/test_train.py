"""End to end through `python -m rlvr.train` on the embedded default (tiny model, CPU, offline)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlvr.metrics import read_metrics, series
from rlvr.models.hf import resolve_path

pytestmark = pytest.mark.slow
TINY = Path(resolve_path("rlvr:tiny-arith"))
# Small and fast: 2 prompts x 4 roll-outs, short budget, 8 validation problems.
FAST = [
    "algorithm.prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=48",
    "data.val_size=8", "val_every=2", "optimizer.lr=1e-3",
]


def run_train(tmp_path: Path, *overrides: str, name: str = "run") -> Path:
    run_dir = tmp_path / name
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rlvr.train", *FAST, *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


def last(rows, key):
    return series(rows, key)[-1]


def test_train_three_steps_changes_weights_logs_metrics_and_checkpoints(tmp_path):
    run_dir = run_train(tmp_path, "max_steps=3", "checkpoint_every=2")
    before = load_file(TINY / "model.safetensors")
    after = load_file(run_dir / "policy" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "policy weights did not change"
    rows = read_metrics(run_dir)
    keys = set().union(*rows)  # every column some row logged
    for key in ["train/reward", "train/accuracy", "train/all_negative_frac", "train/all_positive_frac",
                "train/completion_length", "train/clip_frac", "train/entropy", "train/grad_norm",
                "time/rollout_s", "time/update_s", "time/generated_tokens_per_s", "val/accuracy"]:
        assert key in keys, key
    assert last(rows, "train/prompts_consumed") == 6
    assert 0.0 <= last(rows, "val/accuracy") <= 1.0
    assert (run_dir / "checkpoints" / "step000002.ckpt").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    # the exported folder is a plain HF model
    model = AutoModelForCausalLM.from_pretrained(run_dir / "policy")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_resume_continues_exactly(tmp_path):
    """4 steps in one go == the same run stopped after 2 steps (its step-2 checkpoint) and resumed for 2 more.

    Run with both papers' plugins on, so their state (guidance length and accuracy history) is resumed too.
    """
    common = ["max_steps=4", "checkpoint_every=2", "val_every=100",
              "guidance=adaptive", "guidance.period=1", "guidance.window=1", "advantage=sgpo", "judge=rule"]
    straight = run_train(tmp_path, *common, name="straight")
    ckpt = straight / "checkpoints" / "step000002.ckpt"
    state = torch.load(ckpt, weights_only=False)["rlvr"]
    assert state["prompts"]["position"] == 4
    assert state["plugins"]["guidance"]["steps_observed"] == 2 and len(state["plugins"]["guidance"]["history"]) == 1
    resumed = run_train(tmp_path, *common, f"ckpt_path={ckpt}", name="resumed")
    a, b = read_metrics(straight), read_metrics(resumed)
    for key in ("train/reward", "train/loss", "train/completion_length", "train/prompts_consumed", "guidance/length"):
        assert last(a, key) == pytest.approx(last(b, key), rel=1e-4, abs=1e-6), key
    wa = load_file(straight / "policy" / "model.safetensors")
    wb = load_file(resumed / "policy" / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_multirun_sweeps_two_runs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rlvr.train", "-m", *FAST, "max_steps=1", "val_every=100",
           "export_policy=false", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.csv"))
    assert len(runs) == 2


def test_ddp_on_two_cpu_processes(tmp_path):
    """Lightning's DDP strategy (gloo, 2 processes): ranks read disjoint prompts of one stream, adaptive ℓ
    all-reduces its accuracy, metrics sync; the GPU path uses the same code with NCCL."""
    run_dir = run_train(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "+trainer.strategy=ddp",
                        "max_steps=3", "guidance=adaptive", "guidance.period=1", "guidance.window=1")
    rows = read_metrics(run_dir)
    assert last(rows, "train/prompts_consumed") == 3 * 2 * 2  # steps x ranks x prompts per rank
    assert 0.0 <= last(rows, "val/accuracy") <= 1.0
    assert (run_dir / "policy" / "model.safetensors").exists()


def test_headline_command_offline_fails_only_on_the_download_naming_the_model_and_the_fix(tmp_path):
    """`python -m rlvr.train advantage=sgpo guidance=adaptive model=qwen1.5b`, as written, without the hub."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rlvr.train", "advantage=sgpo", "guidance=adaptive", "model=qwen1.5b", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "model.name_or_path='Qwen/Qwen2.5-1.5B' is not a local folder" in result.stderr
    assert "model.name_or_path=/path/to/DIR" in result.stderr


def test_run_directory_keeps_its_history_fresh_runs_refuse_it_and_auto_resumes_in_place(tmp_path):
    import shutil

    common = ["max_steps=3", "checkpoint_every=2", "val_every=2"]
    straight = run_train(tmp_path, *common, name="straight")
    # a crash after step 3's metrics were logged but before its checkpoint: last.ckpt is still step 2's
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.copy(crashed / "checkpoints" / "step000002.ckpt", crashed / "checkpoints" / "last.ckpt")

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    fresh = subprocess.run([sys.executable, "-m", "rlvr.train", *FAST, *common, f"hydra.run.dir={crashed}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert fresh.returncode != 0 and "already holds a run (metrics.csv, checkpoints)" in fresh.stderr
    assert "ckpt_path=auto" in fresh.stderr

    run_train(tmp_path, *common, "ckpt_path=auto", name="crashed")
    a, b = read_metrics(straight), read_metrics(crashed)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # the earlier rows kept, the interrupted one not doubled
    for key in ("train/loss", "train/reward", "val/accuracy", "train/prompts_consumed"):
        assert series(a, key) == pytest.approx(series(b, key), rel=1e-5, abs=1e-7), key
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["last.ckpt", "step000002.ckpt"]
