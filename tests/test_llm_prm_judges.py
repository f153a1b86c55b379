"""LLM and PRM step judges on tiny local models (CPU, no hub): prompts, parsing, fallbacks, scores, cache, options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import InterpolationResolutionError
from transformers import Qwen2ForCausalLM, Qwen2ForTokenClassification

from rlvr.advantages.sgpo import SGPOAdvantage
from rlvr.batch import Example
from rlvr.data.arithmetic import make_example
from rlvr.judges import prm as prm_module
from rlvr.judges.base import Verdict
from rlvr.judges.llm import LLMJudge, parse_first_error
from rlvr.judges.prm import QWEN_PRM_SYSTEM, PRMJudge, first_below, load_prm
from rlvr.models.tiny import DEFAULT_CHARS, build_char_tokenizer, tiny_qwen2_config
from rlvr.rollout.base import Generation
from tests.helpers import make_batch, with_rewards

CONF = Path(__file__).resolve().parents[1] / "conf"
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def tiny_config(tokenizer, **kw):
    return tiny_qwen2_config(
        len(tokenizer), hidden=32, layers=1, heads=2, max_positions=4096,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **kw,
    )


@pytest.fixture(scope="module")
def llm_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer(DEFAULT_CHARS + "<>'\"")
    path = tmp_path_factory.mktemp("llm_judge")
    Qwen2ForCausalLM(tiny_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def prm_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer(extra_tokens=["<extra_0>", "<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("prm_judge")
    Qwen2ForTokenClassification(tiny_config(tokenizer, num_labels=2)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def example() -> Example:
    return make_example([12, 34, 5, 7], "ex-0")  # steps 12+34=46 ; 46+5=51 ; 51+7=58


# ---------------------------------------------------------------- parse_first_error


@pytest.mark.parametrize(
    ("text", "num_steps", "expected"),
    [
        ("FIRST_ERROR: 2", 3, 1),
        ("FIRST_ERROR: 1", 1, 0),
        ("Step 2 adds wrongly.\nFIRST_ERROR: 2", 3, 1),
        ("All steps check out.\nFIRST_ERROR: none", 3, None),
        ("first_error:3", 3, 2),
        ("  First Error :  Step 3.  ", 3, 2),
        ("**FIRST_ERROR:** **2**", 3, 1),
        ("FIRST_ERROR: `none`", 2, None),
        ("FIRST_ERROR: None.", 2, None),
        ("FIRST_ERROR: 2 (46+5 is not 52)", 2, 1),
        ("The format is FIRST_ERROR: <k>.\nFIRST_ERROR: 3", 3, 2),  # the last marker wins
    ],
)
def test_parse_first_error_accepts_well_formed_replies(text, num_steps, expected):
    assert parse_first_error(text, num_steps) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no 'FIRST_ERROR:'"),
        ("The second step is wrong.", "no 'FIRST_ERROR:'"),
        ("FIRST_ERROR:", "neither a step number"),
        ("FIRST_ERROR: two", "neither a step number"),
        ("FIRST_ERROR: 2.5", "neither a step number"),
        ("FIRST_ERROR: -1", "neither a step number"),
        ("FIRST_ERROR: nonexistent", "neither a step number"),
        ("FIRST_ERROR: 0", "outside 1..3"),
        ("FIRST_ERROR: 4", "outside 1..3"),
    ],
)
def test_parse_first_error_rejects_malformed_replies(text, message):
    with pytest.raises(ValueError, match=message):
        parse_first_error(text, 3)


# ---------------------------------------------------------------- LLMJudge


def test_llm_judge_rejects_bad_config(tmp_path, llm_path):
    with pytest.raises(ValueError, match="on_malformed"):
        LLMJudge(llm_path, on_malformed="skip")
    with pytest.raises(ValueError, match="dtype"):
        LLMJudge(llm_path, dtype="fp8")
    with pytest.raises(ValueError, match="device"):
        LLMJudge(llm_path, device="gpu0")
    with pytest.raises(FileNotFoundError, match="prompt_template"):
        LLMJudge(llm_path, prompt_template=str(tmp_path / "missing.txt"))
    template = tmp_path / "t.txt"
    template.write_text("Problem: {problem}\nFind the error.")
    with pytest.raises(ValueError, match=r"\{steps\}"):
        LLMJudge(llm_path, prompt_template=str(template))


def test_llm_prompt_holds_numbered_steps_reference_and_problem(llm_path, example):
    judge = LLMJudge(llm_path, device="cpu")
    assert not judge.loader.loaded  # building the judge loads nothing
    steps = ["12+34=46", "46+5=52", "52+7=59"]
    text = judge.prompt_text(example, steps)
    assert "Step 1: 12+34=46\nStep 2: 46+5=52\nStep 3: 52+7=59" in text
    assert example.solution in text and example.prompt in text
    assert "(3 steps)" in text and "{" not in text.replace("\\boxed{", "")

    # Braces in the inserted text stay as they are: only the template's own placeholders are filled.
    tricky = Example(id="t", prompt="Show {steps} in \\boxed{}", answer="1")
    assert "Show {steps} in \\boxed{}" in judge.prompt_text(tricky, ["a"])
    assert "(no reference solution given)" in judge.prompt_text(tricky, ["a"])

    # No chat template: the raw text is what the model reads.
    _, tokenizer = judge.loader.get()
    assert judge.prompt_ids(example, steps) == tokenizer.encode(text)


def test_llm_prompt_uses_the_chat_template_when_there_is_one(llm_path, example):
    judge = LLMJudge(llm_path, device="cpu")
    _, tokenizer = judge.loader.get()
    tokenizer.chat_template = "{% for m in messages %}({{ m['role'] }}){{ m['content'] }}{% endfor %}{% if add_generation_prompt %}(assistant){% endif %}"
    text = judge.prompt_text(example, ["12+34=46"])
    assert judge.prompt_ids(example, ["12+34=46"]) == tokenizer.encode(f"(user){text}(assistant)", add_special_tokens=False)


def test_llm_judge_on_a_random_model_parses_or_falls_back(llm_path, example):
    judge = LLMJudge(llm_path, device="cpu", max_new_tokens=8)
    replies = []
    generate = judge.engine.generate

    def spy(prompt_ids, max_new_tokens=None):
        out = generate(prompt_ids, max_new_tokens)
        replies.extend(out)
        return out

    judge.engine.generate = spy
    responses = [["12+34=46", "46+5=51", "51+7=59"], ["12+34=47"]]
    verdicts = judge([example, example], responses)

    model, tokenizer = judge.loader.get()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert len(replies) == 2 and all(0 < len(g.token_ids) <= 8 for g in replies)
    for generation, steps, verdict in zip(replies, responses, verdicts):
        try:
            expected = Verdict(parse_first_error(tokenizer.decode(generation.token_ids, skip_special_tokens=True), len(steps)))
        except ValueError:
            expected = Verdict(len(steps) - 1, parsed=False)  # on_malformed=last_step
        assert verdict == expected


def fake_engine(judge: LLMJudge, replies: list[str]) -> list[list[int]]:
    """Make the judge's engine answer `replies` (as token ids, EOS included); returns the prompts it was sent."""
    _, tokenizer = judge.loader.get()
    sent: list[list[int]] = []

    def generate(prompt_ids, max_new_tokens=None):
        sent.extend(prompt_ids)
        answers = replies[len(sent) - len(prompt_ids) : len(sent)]
        return [Generation(tokenizer.encode(a) + [tokenizer.eos_token_id], True) for a in answers]

    judge.engine.generate = generate
    return sent


def test_llm_judge_turns_replies_into_verdicts(llm_path, example):
    judge = LLMJudge(llm_path, device="cpu")
    sent = fake_engine(judge, ["FIRST_ERROR: 2", "I think step two.", "FIRST_ERROR: none", "FIRST_ERROR: 9"])
    responses = [["12+34=46", "46+5=52", "52+7=59"], ["12+34=46", "46+5=50"], ["12+34=46", "46+5=51", "51+7=58"], [], ["a", "b"]]
    verdicts = judge([example] * 5, responses)
    assert verdicts == [
        Verdict(1),
        Verdict(1, parsed=False),  # unreadable: error placed in the last step
        Verdict(None),
        Verdict(None),  # no steps: not sent to the model
        Verdict(1, parsed=False),  # step 9 of 2 is out of range
    ]
    assert len(sent) == 4
    assert sent[0] == judge.prompt_ids(example, responses[0])

    # The same responses again come from the cache: the engine is not asked.
    assert judge([example] * 5, responses) == verdicts
    assert len(sent) == 4


def test_llm_judge_on_malformed_none(llm_path, example):
    judge = LLMJudge(llm_path, device="cpu", on_malformed="none")
    fake_engine(judge, ["no idea"])
    assert judge([example], [["12+34=46", "46+5=50"]]) == [Verdict(None, parsed=False)]


# ---------------------------------------------------------------- PRMJudge


def test_first_below_picks_the_first_low_score():
    assert first_below([0.9, 0.4, 0.2], 0.5) == 1
    assert first_below([0.9, 0.6], 0.5) is None
    assert first_below([0.49], 0.5) == 0
    assert first_below([0.5], 0.5) is None  # at the threshold is not below it


def test_prm_input_follows_the_qwen_prm_format(prm_path, example):
    judge = PRMJudge(prm_path, device="cpu")
    steps = list(example.steps)
    text = judge.input_text(example, steps)
    assert text == (
        f"<|im_start|>system\n{QWEN_PRM_SYSTEM}<|im_end|>\n<|im_start|>user\n{example.prompt}<|im_end|>\n"
        "<|im_start|>assistant\n12+34=46<extra_0>46+5=51<extra_0>51+7=58<extra_0><|im_end|>\n"
    )
    _, tokenizer = judge.loader.get()
    ids = judge.input_ids(example, steps)
    assert ids.count(tokenizer.convert_tokens_to_ids("<extra_0>")) == 3

    no_system = PRMJudge(prm_path, device="cpu", system_prompt=None)
    assert no_system.input_text(example, steps).startswith("<|im_start|>user\n")

    # No chat template: plain text, parts separated by blank lines.
    tokenizer.chat_template = None
    assert judge.input_text(example, steps[:1]) == f"{QWEN_PRM_SYSTEM}\n\n{example.prompt}\n\n12+34=46<extra_0>"
    assert judge.input_ids(example, steps[:1]).count(tokenizer.convert_tokens_to_ids("<extra_0>")) == 1


def test_prm_scores_one_per_step_and_padding_changes_nothing(prm_path, example):
    judge = PRMJudge(prm_path, device="cpu", batch_size=8)
    responses = [list(example.steps), ["12+34=46"], [], ["12+34=46", "46+5=50", "50+7=57", "57 is the sum"]]
    scores = judge.step_scores([example] * 4, responses)
    assert [len(s) for s in scores] == [3, 1, 0, 4]
    assert all(0 < s < 1 for row in scores for s in row)
    # Scored alone (no padding) the longest and the shortest rows give the same numbers as in the padded batch.
    for i in (1, 3):
        alone = judge.step_scores([example], [responses[i]])[0]
        assert alone == pytest.approx(scores[i], abs=1e-5)


def test_prm_threshold_on_forced_head_probabilities(prm_path, example):
    judge = PRMJudge(prm_path, device="cpu", threshold=0.5)
    model, _ = judge.loader.get()
    with torch.no_grad():  # logits = bias for every token: P(class 1) = sigmoid(log 3) = 0.75
        model.score.weight.zero_()
        model.score.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    steps = list(example.steps)
    assert judge.step_scores([example], [steps]) == [pytest.approx([0.75] * 3)]
    assert judge([example], [steps]) == [Verdict(None)]

    strict = PRMJudge(prm_path, device="cpu", threshold=0.8)
    strict.loader._loaded = judge.loader.get()  # the same forced model
    assert strict([example], [steps]) == [Verdict(0)]


def test_prm_first_error_is_the_first_step_below_threshold(prm_path, example):
    """Known per-token logits: a step ending in '!' scores sigmoid(-2), any other sigmoid(2)."""
    judge = PRMJudge(prm_path, device="cpu", batch_size=2)
    model, tokenizer = judge.loader.get()
    bang = tokenizer.convert_tokens_to_ids("!")

    def force(module, args, kwargs, output):
        ids = kwargs["input_ids"]
        before = torch.nn.functional.pad(ids, (1, 0))[:, :-1]  # the token before each position
        logits = torch.zeros(*ids.shape, 2)
        logits[..., 1] = torch.where(before == bang, -2.0, 2.0)
        output.logits = logits
        return output

    handle = model.register_forward_hook(force, with_kwargs=True)
    try:
        responses = [["12+34=46", "46+5=52!", "52+7=59!"], ["12+34=46", "46+5=51", "51+7=58"], ["1+1=3!"]]
        scores = judge.step_scores([example] * 3, responses)
        high, low = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))
        assert scores == [pytest.approx([high, low, low]), pytest.approx([high] * 3), pytest.approx([low])]
        assert judge([example] * 3, responses) == [Verdict(1), Verdict(None), Verdict(0)]
    finally:
        handle.remove()


def test_prm_caches_verdicts(prm_path, example):
    judge = PRMJudge(prm_path, device="cpu")
    model, _ = judge.loader.get()
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        responses = [list(example.steps), ["12+34=47"]]
        first = judge([example] * 2, responses)
        assert len(calls) == 1
        assert judge([example] * 2, responses) == first
        assert len(calls) == 1  # all cached: the model did not run
        judge([example], [["12+34=45"]])
        assert len(calls) == 2  # a new response does
    finally:
        handle.remove()


def test_prm_rejects_step_token_mismatches(prm_path, example):
    judge = PRMJudge(prm_path, device="cpu")
    with pytest.raises(ValueError, match="holds 3 '<extra_0>' tokens for 2 steps"):
        judge([example], [["12+34=46<extra_0>", "46+5=51"]])
    unknown = PRMJudge(prm_path, device="cpu", step_token="<extra_9>")
    with pytest.raises(ValueError, match="not a single token"):
        unknown([example], [["12+34=46"]])


def test_prm_options_device_dtype_and_validation(prm_path, example):
    judge = PRMJudge(prm_path, device="cpu", dtype="bfloat16")
    model, _ = judge.loader.get()
    assert next(model.parameters()).dtype == torch.bfloat16 and next(model.parameters()).device.type == "cpu"
    assert len(judge.step_scores([example], [list(example.steps)])[0]) == 3

    auto = PRMJudge(prm_path)  # auto: CPU float32 on a machine without CUDA
    if not torch.cuda.is_available():
        model, _ = auto.loader.get()
        assert next(model.parameters()).dtype == torch.float32
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            PRMJudge(prm_path, device="cuda")([example], [["x"]])

    with pytest.raises(ValueError, match="threshold"):
        PRMJudge(prm_path, threshold=1.5)
    with pytest.raises(ValueError, match="dtype"):
        PRMJudge(prm_path, dtype="half")


def test_load_prm_uses_remote_code_for_non_token_classification(llm_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(prm_module.AutoModel, "from_pretrained", lambda name, **kw: seen.update(name=name, **kw) or "remote")
    assert load_prm(llm_path, dtype=torch.float32) == "remote"  # a Qwen2ForCausalLM config: not token classification
    assert seen == {"name": llm_path, "trust_remote_code": True, "dtype": torch.float32}


# ---------------------------------------------------------------- configs


def test_judge_configs(llm_path):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        assert compose(overrides=["+judge=none"]).judge is None

        prm = instantiate(compose(overrides=["+judge=prm"]).judge)
        assert isinstance(prm, PRMJudge) and prm.loader.name == "Qwen/Qwen2.5-Math-PRM-7B"
        assert prm.threshold == 0.5 and prm.step_token == "<extra_0>" and prm.system_prompt == QWEN_PRM_SYSTEM
        assert not prm.loader.loaded  # nothing fetched until the first judged batch

        with pytest.raises(InterpolationResolutionError):  # model=policy reads the policy's config: none composed here
            instantiate(compose(overrides=["+judge=llm"]).judge)
        with pytest.raises(Exception, match="judge.policy"):  # hydra wraps the ValueError
            instantiate(compose(overrides=["+judge=llm", "judge.policy=null"]).judge)
        llm = instantiate(compose(overrides=["+judge=llm", f"judge.model={llm_path}", "judge.policy=null"]).judge)
        assert isinstance(llm, LLMJudge) and llm.on_malformed == "last_step" and llm.engine.max_new_tokens == 16


# ---------------------------------------------------------------- with SGPO

# One all-wrong group on 12+34+5=51: step 2 wrong / step 1 wrong / both steps right but a wrong answer.
WRONG_GROUP = [["12+34=46;46+5=52#52", "12+34=47;47+5=52#52", "12+34=46;46+5=51#50"]]


def test_sgpo_with_llm_judge_colours_an_all_negative_group(llm_path):
    judge = LLMJudge(llm_path, device="cpu")
    fake_engine(judge, ["FIRST_ERROR: 2", "FIRST_ERROR: 1", "I cannot tell"])
    batch = with_rewards(make_batch(WRONG_GROUP), [0.0, 0.0, 0.0])
    advantages = SGPOAdvantage(judge)(batch)
    assert batch.first_error_step.tolist() == [1, 0, 1]  # the unreadable reply falls back to the last step
    assert batch.rts.tolist() == [0.5, 0.0, 0.5]
    assert batch.metrics["judge/parse_failures"] == 1.0
    per_sample = advantages.sum(1)
    assert per_sample[1] < 0 < per_sample[0] and advantages.abs().sum() > 0


def test_sgpo_with_prm_judge_colours_an_all_negative_group(prm_path):
    judge = PRMJudge(prm_path, device="cpu")
    model, tokenizer = judge.loader.get()
    bad = torch.tensor(tokenizer.convert_tokens_to_ids(["7", "2"]))

    def force(module, args, kwargs, output):  # a step whose last character is 7 or 2 scores sigmoid(-2)
        ids = kwargs["input_ids"]
        before = torch.nn.functional.pad(ids, (1, 0))[:, :-1]
        logits = torch.zeros(*ids.shape, 2)
        logits[..., 1] = torch.where(torch.isin(before, bad), -2.0, 2.0)
        output.logits = logits
        return output

    model.register_forward_hook(force, with_kwargs=True)
    batch = with_rewards(make_batch(WRONG_GROUP), [0.0, 0.0, 0.0])
    advantages = SGPOAdvantage(judge)(batch)
    # Steps end in 6|2 -> error at step 2; 7|2 -> step 1; 6|0 -> none found (SGPO puts it in the last step).
    assert batch.first_error_step.tolist() == [1, 0, -1]
    assert batch.rts.tolist() == [0.5, 0.0, 0.5]
    assert batch.metrics["judge/parse_failures"] == 0.0
    assert advantages.abs().sum() > 0


def test_a_judge_whose_replies_are_all_unreadable_warns_once_then_every_50th_time(caplog):
    from rlvr.data.arithmetic import make_example
    from rlvr.judges.base import Judge, Verdict

    class Garbled(Judge):
        def _judge(self, examples, responses):
            return [Verdict(len(steps) - 1, parsed=False) for steps in responses]

    judge = Garbled()
    for i in range(51):
        judge([make_example([1, i], "e")], [["1+1=2"]])
    assert judge.unreadable_calls == 51
    assert caplog.text.count("none of 1 replies could be read") == 2  # calls 1 and 51
