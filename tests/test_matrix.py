"""Every model family x data preset x (advantage, guidance) that makes sense on CPU: compose the config the
way a user would and run one real training step, in process. Model families are local stand-ins: the shipped
tiny model (bare prompts), and tiny Qwen2 models with and without a chat template (told the format)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from rlvr.data.prompts import PromptEncoder
from rlvr.data.arithmetic import ArithmeticTask
from rlvr.models.tiny import build_char_tokenizer, tiny_qwen2_config
from rlvr.train import build_module, build_trainer

FIXTURES = Path(__file__).parent / "fixtures"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
DATA = {
    "arithmetic": ["data.train_size=40", "data.val_size=4"],
    "gsm8k": [f"data.path={FIXTURES / 'gsm8k'}", "data.val_size=4"],
    "math500": [f"data.path={FIXTURES / 'math500'}", "data.val_size=4"],
}
PLUGINS = {"grpo": ["advantage=grpo", "guidance=none"], "sgpo+adaptive": ["advantage=sgpo", "guidance=adaptive"]}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """name -> model overrides. Random tiny Qwen2s with a character tokenizer that can spell any prompt."""
    from transformers import AutoModelForCausalLM

    folders = {}
    for name, template in (("chat", CHAT_TEMPLATE), ("plain", None)):
        folder = tmp_path_factory.mktemp(name)
        tokenizer = build_char_tokenizer()
        if template:
            tokenizer.chat_template = template
        config = tiny_qwen2_config(len(tokenizer), hidden=32, layers=1, heads=2, max_positions=4096,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = ["model=smollm2_135m", f"model.name_or_path={folder}", "model.gguf_file=null"]
    return {"tiny": ["model=tiny"], **folders}


@pytest.mark.parametrize("plugins", PLUGINS)
@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("family", ["tiny", "chat", "plain"])
def test_one_real_step(stand_ins, tmp_path, family, data, plugins):
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=[
            *stand_ins[family], f"data={data}", *DATA[data], *PLUGINS[plugins],
            *(["data.long_prompts=skip"] if family == "tiny" and data != "arithmetic" else []),  # its context: 256 positions
            "algorithm.prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=12",
            "max_steps=1", "val_every=100", "export_policy=false", "judge.max_new_tokens=4" if data != "arithmetic" else "seed=0",
        ])
    if family == "tiny" and data == "math500" and plugins == "sgpo+adaptive":
        # Its 256 positions hold no MATH-500 problem with its reference solution (characters are tokens): refused
        # before the weights load, naming the fix, not cut short mid-roll-out.
        with pytest.raises(ValueError, match="guided training prompts are longer than .* all of them: use a model with a longer context"):
            build_module(cfg)
        return
    module = build_module(cfg)
    trainer = build_trainer(cfg, tmp_path, module.algorithm.optimizer_steps_per_rollout)
    trainer.fit(module)
    logged = trainer.callback_metrics
    assert trainer.global_step == 1 and "train/loss" in logged
    if plugins == "sgpo+adaptive":  # SGPO and the guided schedule ran inside the step
        assert "sgpo/graded" in logged and "guidance/length" in logged


def test_pretrained_models_are_told_the_format_and_the_tiny_one_is_not(stand_ins):
    from rlvr.models.hf import load_tokenizer

    task = ArithmeticTask(train_size=4, val_size=2)
    example = task.val()[0]
    chat_folder = stand_ins["chat"][1].split("=", 1)[1]
    tokenizer = load_tokenizer(chat_folder)
    told = tokenizer.decode(PromptEncoder(task, tokenizer)(example))
    assert told.startswith("system: Add the numbers one at a time")
    assert "user: 250+3=\nassistant: 250+3=253#253\n" in told  # worked examples as chat turns
    assert told.endswith(f"user: {example.prompt}\nassistant: ")
    assert tokenizer.decode(PromptEncoder(task, tokenizer, bare=True)(example)) == example.prompt
    plain = build_char_tokenizer()
    text = plain.decode(PromptEncoder(task, plain)(example))
    assert text.startswith("Add the numbers") and "\n250+3=\n250+3=253#253\n\n" in text and text.endswith(example.prompt)
