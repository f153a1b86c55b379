"""Model specs: built-in and package paths, tokenizer round trip, LoRA, gradient checkpointing."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlvr.models.hf import DTYPES, HFModel, pad_token_id, resolve_dtype, resolve_path
from rlvr.models.tiny import build_char_tokenizer, tiny_qwen2_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tok = build_char_tokenizer()
    config = tiny_qwen2_config(len(tok), hidden=32, layers=1, heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_path_errors_name_the_fix():
    with pytest.raises(FileNotFoundError, match="python -m rlvr.sft"):
        resolve_path("rlvr:no-such-model")
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_path("pkg:no_such_package_xyz")
    assert resolve_path("Qwen/Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"


def test_character_tokenizer_survives_save_and_reload(tiny_dir):
    tok = HFModel(str(tiny_dir)).load_tokenizer()
    text = "a b\n12+3=15;#"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"


def test_lora_trains_only_adapters(tiny_dir):
    policy = HFModel(str(tiny_dir), lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}).load_policy()
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_adapters_have_no_dropout_in_the_policy(tiny_dir):
    """Issue 23: dropout was switched off before the adapter was added, so lora_dropout stayed on."""
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.5, "init_lora_weights": False}
    policy = HFModel(str(tiny_dir), lora=lora).load_policy()
    dropouts = [m for n, m in policy.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n]
    assert policy.training and dropouts and all(m.p == 0.0 for m in dropouts)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.manual_seed(1)
    assert torch.equal(policy(input_ids=ids).logits, policy(input_ids=ids).logits)  # random B: dropout would show


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    grads = []
    for checkpointing in (False, True):
        model = HFModel(str(tiny_dir), gradient_checkpointing=checkpointing).load_policy()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(model.model.embed_tokens.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_reference_is_frozen_and_bad_dtype_rejected(tiny_dir):
    ref = HFModel(str(tiny_dir)).load_reference()
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    with pytest.raises(ValueError, match="bfloat16"):
        HFModel(str(tiny_dir), dtype="fp8")


def test_resolve_dtype_names_auto_by_device_and_errors(monkeypatch):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    for name, dtype in DTYPES.items():
        assert resolve_dtype(name) == dtype and resolve_dtype(name, torch.device("cpu")) == dtype
    # No device: the one a run would pick (resolve_device("auto")).
    assert resolve_dtype("auto") == (resolve_dtype("auto", torch.device("cuda")) if torch.cuda.is_available() else torch.float32)
    monkeypatch.setattr(torch.version, "hip", None)
    for capability, dtype in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_dtype("auto", torch.device("cuda")) == dtype
    with pytest.raises(ValueError, match=r"dtype must be auto \| bfloat16 \| float16 \| float32, got 'fp8'"):
        resolve_dtype("fp8")


def test_auto_dtype_is_checked_early_and_loads_float32_on_cpu(tiny_dir, monkeypatch):
    with pytest.raises(ValueError, match="model.reference_dtype must be auto"):
        HFModel(str(tiny_dir), reference_dtype="half")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = HFModel(str(tiny_dir), dtype="auto", reference_dtype="bfloat16")
    assert next(spec.load_policy().parameters()).dtype == torch.float32
    assert next(spec.load_reference().parameters()).dtype == torch.bfloat16


def test_pad_token_id_falls_back_to_eos_then_errors():
    from types import SimpleNamespace

    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=1)) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=0)) == 0
    with pytest.raises(ValueError, match="neither a pad nor an EOS token"):
        pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))


def test_a_model_the_hub_cannot_give_names_the_option_and_the_local_fix(tmp_path):
    from rlvr.models.hf import from_hub

    def offline(source, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    with pytest.raises(OSError, match=r"judge.model='org/judge' is not a local folder .* judge.model=/path/to/DIR"):
        from_hub(offline, "org/judge", "judge.model")
    with pytest.raises(OSError, match="connect"):  # a local folder's own error is not reworded
        from_hub(offline, str(tmp_path), "model.name_or_path")
