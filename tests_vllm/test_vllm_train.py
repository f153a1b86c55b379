"""`python -m rlvr.train rollout=vllm` end to end on the shipped tiny model (CPU build of vLLM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlvr.metrics import read_metrics, series
from rlvr.models.hf import resolve_path

FAST = ["max_steps=2", "val_every=2", "algorithm.prompts_per_step=2", "rollout.num_generations=4",
        "rollout.max_new_tokens=48", "data.val_size=8", "optimizer.lr=1e-3"]
VLLM_CPU = ["rollout=vllm", "rollout.kv_cache_gib=1", "rollout.enforce_eager=true"]  # CPU: fixed KV cache, no compile


def run_train(tmp_path: Path, *overrides: str) -> tuple[Path, str]:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rlvr.train", *FAST, *VLLM_CPU, *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir, result.stdout + result.stderr


def policy_changed(run_dir: Path) -> bool:
    before = load_file(Path(resolve_path("rlvr:tiny-arith")) / "model.safetensors")
    after = load_file(run_dir / "policy" / "model.safetensors")
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_two_training_steps_with_vllm_roll_outs(tmp_path):
    run_dir, _ = run_train(tmp_path)
    rows = read_metrics(run_dir)
    assert len(series(rows, "train/reward")) == 2 and series(rows, "time/generated_tokens_per_s")[-1] > 0
    assert policy_changed(run_dir)
    assert len(series(rows, "val/accuracy")) == 2  # greedy validation before training and after step 2


def test_ddp_builds_one_engine_per_rank_on_the_trainers_process_group(tmp_path):
    """Two CPU ranks (gloo): each builds its own engine in vLLM's torchrun mode ("external launcher") on the
    process group Lightning made, and trains."""
    run_dir, output = run_train(tmp_path, "max_steps=1", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                "trainer.precision=32-true")
    assert output.count("Using external launcher for distributed inference") == 2  # vLLM's log line, once per rank
    assert len(series(read_metrics(run_dir), "train/reward")) == 1 and policy_changed(run_dir)
