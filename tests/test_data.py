import inspect
import json
import re
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlvr.data.hub import BOXED_PROMPT, GSM8K, MATH500
from rlvr.data.steps import step_texts

ROOT = Path(__file__).parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()


def local(name: str) -> Path:
    folder = DATA / name
    if not folder.is_dir():
        pytest.skip(f"offline data copy {folder} is missing (see /work/shared/data/README.md)")
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def gsm8k():
    # 481 train rows reach row 480, the first with a blank line in its solution.
    return GSM8K(path=str(local("gsm8k")), train_size=481, val_size=50)


@pytest.fixture(scope="module")
def math500():
    return MATH500(path=str(local("math500")))


@pytest.fixture(scope="module")
def math500_rows():
    with (local("math500") / "test.jsonl").open() as handle:
        return [json.loads(line) for line in handle]


# --- GSM8K ---


def test_gsm8k_first_test_row(gsm8k):
    first = gsm8k.val()[0]
    assert first.id == "gsm8k-test-0"
    assert first.prompt.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.answer == "18"
    # raw: "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day ..."
    assert first.steps == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.",
    )
    assert (first.step_separator, first.step_style) == ("\n", "lines")
    assert first.meta == {"source": "gsm8k", "split": "test", "index": 0}


def test_gsm8k_commas_and_blank_lines(gsm8k):
    train = gsm8k.train()
    assert train[345].answer == "1080"  # raw final line "#### 1,080"
    steps = train[480].steps  # raw solution has an empty line between its 4th and 5th lines
    assert len(steps) == 5
    assert steps[0] == "His annual salary for the first year of working is 6000 x 12= $72000."
    assert steps[3] == "Kirt's annual salary in the second and third year was $7800 x 12 = $93600."
    assert train[480].answer == "259200"


def test_gsm8k_no_annotations_or_empty_steps_anywhere(gsm8k):
    for ex in gsm8k.train() + gsm8k.val():
        assert ex.steps and all(step and step == step.strip() for step in ex.steps), ex.id
        assert not any("<<" in step or ">>" in step or "####" in step for step in ex.steps), ex.id
        assert ex.answer and "," not in ex.answer, ex.id


def test_gsm8k_sizes_take_the_first_rows(gsm8k):
    assert (len(gsm8k.train()), len(gsm8k.val())) == (481, 50)
    everything = GSM8K(path=str(local("gsm8k")), val_size=None).val()
    assert len(everything) == 1319
    assert [ex.id for ex in everything[:50]] == [ex.id for ex in gsm8k.val()]
    assert everything[:50] == gsm8k.val()  # same content on a fresh load


def test_gsm8k_size_larger_than_split(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "answer": "1+1=2\n#### 2"}])
    with pytest.raises(ValueError, match=re.escape(f"gsm8k: val_size=2 but split 'test' of {tmp_path / 'test.jsonl'} has 1 rows")):
        GSM8K(path=str(tmp_path), val_size=2).val()


def test_gsm8k_missing_field_names_file_split_row_field(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": "q0", "answer": "#### 1"}, {"question": "q1"}])
    with pytest.raises(ValueError) as info:
        GSM8K(path=str(tmp_path)).train()
    assert str(info.value) == f"gsm8k: {tmp_path / 'train.jsonl'}, split 'train', row 1: field 'answer' is missing"


@pytest.mark.parametrize(
    "solution, problem",
    [("2+2=4\n4", "has no '####' final answer"), ("2+2=4\n####  ", "is empty after '####'")],
)
def test_gsm8k_bad_final_answer(tmp_path, solution, problem):
    write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "answer": "#### 3"}, {"question": "q", "answer": solution}])
    with pytest.raises(ValueError) as info:
        GSM8K(path=str(tmp_path), val_size=None).val()
    assert str(info.value) == f"gsm8k: {tmp_path / 'test.jsonl'}, split 'test', row 1: field 'answer' {problem}"


def test_gsm8k_non_string_field(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": 7, "answer": "#### 3"}])
    with pytest.raises(ValueError, match=re.escape("row 0: field 'question' is int, not a string")):
        GSM8K(path=str(tmp_path)).train()


def test_gsm8k_missing_split_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"gsm8k: no file {tmp_path / 'train.jsonl'} for split 'train'")):
        GSM8K(path=str(tmp_path)).train()


def test_hub_source_names_hub_and_config():
    assert GSM8K().source("test") == "openai/gsm8k (config main)"
    assert MATH500().source("test") == "HuggingFaceH4/MATH-500"


# --- prompt template ---


def test_default_prompt_template_formats_to_boxed_instruction():
    assert GSM8K().prompt_template.format(prompt="What is 2+2?") == (
        "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}."
    )


@pytest.mark.parametrize("template", ["{prompt} in \\boxed{}", "{question}", "no field"])
def test_bad_prompt_template(template):
    with pytest.raises(ValueError, match="prompt_template must"):
        GSM8K(prompt_template=template)


@pytest.mark.parametrize("size", [-1, 1.5])
def test_bad_sizes(size):
    with pytest.raises(ValueError, match=re.escape(f"data.train_size must be an integer >= 0 or null, got {size!r}")):
        GSM8K(train_size=size)


# --- MATH-500 ---


def test_math500_split_is_disjoint_and_val_is_the_tail(math500, math500_rows):
    train, val = math500.train(), math500.val()
    assert (len(train), len(val)) == (400, 100)
    assert [ex.id for ex in train + val] == [row["unique_id"] for row in math500_rows]
    assert not {ex.id for ex in train} & {ex.id for ex in val}
    assert val[0].id == "test/geometry/817.json" and val[0].meta["index"] == 400
    assert len(MATH500(path=str(local("math500")), train_size=10).train()) == 10


def test_math500_fields(math500, math500_rows):
    first, row = math500.train()[0], math500_rows[0]
    assert first.id == "test/precalculus/807.json"
    assert first.prompt == row["problem"]
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert (first.step_separator, first.step_style) == ("\n", "latex")
    assert first.steps == tuple(step_texts(row["solution"], "latex"))
    assert len(first.steps) >= 2 and "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}" in first.steps[-1]
    assert first.meta["subject"] == "Precalculus" and first.meta["level"] == 2
    assert all(ex.steps for ex in math500.train() + math500.val())


def test_math500_sizes_that_do_not_fit(tmp_path):
    row = {"problem": "p", "solution": "s", "answer": "1", "unique_id": "u"}
    write_jsonl(tmp_path / "test.jsonl", [row] * 3)
    with pytest.raises(ValueError, match=re.escape(f"math500: val_size=4 but split 'test' of {tmp_path / 'test.jsonl'} has 3 rows")):
        MATH500(path=str(tmp_path), val_size=4).val()
    with pytest.raises(ValueError, match=re.escape("math500: train_size=2 but only 1 rows of split 'test' are left for training")):
        MATH500(path=str(tmp_path), val_size=2, train_size=2).train()


def test_math500_missing_field(tmp_path):
    good = {"problem": "p", "solution": "s", "answer": "1", "unique_id": "u"}
    write_jsonl(tmp_path / "test.jsonl", [good, {k: v for k, v in good.items() if k != "unique_id"}])
    with pytest.raises(ValueError) as info:
        MATH500(path=str(tmp_path), val_size=1).val()
    assert str(info.value) == f"math500: {tmp_path / 'test.jsonl'}, split 'test', row 1: field 'unique_id' is missing"


# --- configs ---


@pytest.mark.parametrize("name, cls", [("gsm8k", GSM8K), ("math500", MATH500)])
def test_data_yaml_lists_every_option_with_its_default(name, cls):
    config = OmegaConf.load(ROOT / "conf" / "data" / f"{name}.yaml").data  # a preset: data + reward + length
    options = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert {k: v for k, v in config.items() if k != "_target_"} == options
    assert config.path is None and config.prompt_template == BOXED_PROMPT
    task = instantiate(config, path=str(local(name)))
    assert type(task) is cls and task.use_chat_template is True


@pytest.mark.parametrize("completion, checkable", [
    ("12+34=46;46+5=51#51", True),
    (" 12 + 34 = 46 ;\n46+5=51 # 51.", True),  # whitespace and a full stop
    ("12+34=46;#46", True),  # the answer alone after the last step
    ("12+34=46", False),  # no answer
    ("12+34=46#", False),
    ("Sure! 12+34=46#46", False),  # text before the steps: checkable by the judge, but not the format
    ("#51", False),  # no step
])
def test_in_format(completion, checkable):
    from rlvr.data.arithmetic import in_format

    assert in_format(completion) is checkable


def test_worked_examples_are_right_and_in_format():
    from rlvr.data.arithmetic import ArithmeticTask, final_answer, in_format, parse_terms

    for problem, solution in ArithmeticTask.worked_examples:
        assert in_format(solution) and final_answer(solution) == str(sum(parse_terms(problem)))


@pytest.mark.parametrize("content, message", [
    (b"", "holds no rows"),
    (b"\n\n", "holds no rows"),
    (b'{"question": "q", "answer": "#### 1"}\n{"question": "caf\xe9"}\n', "line 2: not UTF-8 text"),
    (b'{"question": "q", "answer": "#### 1"}\n{"question": \n', "line 2: not JSON"),
    (b'["q", "#### 1"]\n', "line 1: each line must be a JSON object, got list"),
])
def test_a_bad_data_file_names_the_file_and_line(tmp_path, content, message):
    from rlvr.data.hub import GSM8K

    (tmp_path / "train.jsonl").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        GSM8K(path=str(tmp_path)).train()
    assert str(tmp_path / "train.jsonl") in str(info.value)


def _split_check(**options):
    from rlvr.data.arithmetic import ArithmeticTask
    from rlvr.data.checks import checked_splits
    from rlvr.data.prompts import PromptEncoder
    from rlvr.models.tiny import build_char_tokenizer

    task = ArithmeticTask(min_terms=2, max_terms=5, train_size=40, val_size=8, **options)
    return checked_splits(task, PromptEncoder(task, build_char_tokenizer(), bare=True).batch)


def test_long_prompts_are_an_error_naming_the_longest_or_skipped_with_a_count(caplog):
    # bare prompts of 2..5 three-digit terms are at most 5 * 4 = 20 characters; a limit of 12 cuts the long ones
    with pytest.raises(ValueError, match=r"training prompts are longer than data.max_prompt_tokens=12 \(the longest, 'train-\d+', has \d+ tokens\)"):
        _split_check(max_prompt_tokens=12)
    train, val = _split_check(max_prompt_tokens=12, long_prompts="skip")
    assert train and all(len(e.prompt) <= 12 for e in train + val)
    assert "skipped (data.long_prompts=skip)" in caplog.text
    with pytest.raises(ValueError, match="all of them"):
        _split_check(max_prompt_tokens=2, long_prompts="skip")
    with pytest.raises(ValueError, match="data.long_prompts must be one of error | skip"):
        _split_check(long_prompts="truncate")
    assert len(_split_check(max_prompt_tokens=None)[0]) == 40


def test_train_validation_overlap_is_counted_in_a_warning(caplog):
    from rlvr.data.checks import checked_splits
    from rlvr.data.hub import GSM8K

    fixtures = Path(__file__).parent / "fixtures" / "gsm8k"
    same = GSM8K(path=str(fixtures), train_split="test", val_split="test", val_size=2, max_prompt_tokens=None)
    checked_splits(same, lambda examples: [[0]] * len(examples))
    assert "4 training problems are also validation problems" not in caplog.text  # only the 2 shared ones count
    assert "2 training problems are also validation problems" in caplog.text


def test_guidance_on_problems_without_reference_steps_is_refused_or_warned(caplog):
    from dataclasses import replace

    from rlvr.data.arithmetic import ArithmeticTask
    from rlvr.data.checks import checked_splits
    from rlvr.guidance.adaptive import AdaptiveGuidance
    from rlvr.guidance.base import Guidance

    class Stepless(ArithmeticTask):
        keep = 0  # how many training problems keep their reference steps

        def train(self):
            return [e if i < self.keep else replace(e, steps=()) for i, e in enumerate(super().train())]

    task = Stepless(train_size=10, val_size=2, max_prompt_tokens=None)
    guided = AdaptiveGuidance(max_length=4, initial_length=4)
    with pytest.raises(ValueError, match="needs reference steps, and no training problem of arithmetic has any"):
        checked_splits(task, None, guided)
    assert checked_splits(task, None, Guidance())  # plain GRPO needs none
    task.keep = 3
    checked_splits(task, None, guided)
    assert "7 of 10 training problems have no reference steps" in caplog.text
