"""Code data sets: HumanEval, MBPP and stdin/stdout rows load offline, with tests and statement-level steps."""

from __future__ import annotations

import ast
import json
import string
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from rlvr.data.checks import checked_splits
from rlvr.data.code import FENCE, CodeStdio, HumanEval, MBPP, fenced_code, free_names, outputs_match, reference_steps
from rlvr.data.steps import step_texts
from rlvr.guidance.scheduled import ScheduledGuidance
from rlvr.models.tiny import build_char_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "code"
HUMANEVAL = FIXTURES / "humaneval" / "HumanEval.jsonl.gz"


def unfenced(solution: str) -> str:
    assert solution.startswith(FENCE + "python\n") and solution.endswith("\n" + FENCE)
    return solution[len(FENCE + "python\n") : -len("\n" + FENCE)]


def same_program(a: str, b: str) -> bool:
    return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))


@pytest.fixture(scope="module")
def humaneval():
    return HumanEval(path=str(HUMANEVAL))


def test_humaneval_loads_all_164_offline_with_tests_and_steps(humaneval):
    problems = humaneval.val()
    assert len(problems) == 164 and problems[0].id == "HumanEval/0" and problems[-1].id == "HumanEval/163"
    first = problems[0]
    tests = first.meta["tests"]
    assert tests.kind == "assert" and tests.prefix == first.prompt == tests.context
    assert tests.bind == (("has_close_elements", "has_close_elements"),) and tests.tests.endswith("check(has_close_elements)\n")
    # The steps, joined, are the prompt and the canonical solution in one fenced block: the same program.
    for example in problems:
        assert same_program(unfenced(example.solution), example.answer), example.id
    assert first.steps[0].startswith(FENCE + "python\nfrom typing import List") and first.steps[0].endswith("for idx, elem in enumerate(numbers):")
    assert first.steps[1] == "        for idx2, elem2 in enumerate(numbers):"  # indentation kept


def test_humaneval_is_for_evaluation_unless_rows_are_left_for_training(humaneval):
    with pytest.raises(ValueError, match="HumanEval is an evaluation set.*data=mbpp"):
        humaneval.train()
    split = HumanEval(path=str(HUMANEVAL), val_size=16)
    train, val = split.train(), split.val()
    assert (len(train), len(val)) == (148, 16) and val[0].id == "HumanEval/148"


def test_hub_names_are_kept_for_online_use():
    assert HumanEval().source("test") == "openai/openai_humaneval"
    assert MBPP().source("train") == "google-research-datasets/mbpp (config full)"
    assert CodeStdio().source("train") == "open-r1/verifiable-coding-problems-python"


def test_mbpp_rows_become_bound_assert_tests():
    mbpp = MBPP(path=str(FIXTURES / "mbpp"), val_size=None)
    train, val = mbpp.train(), mbpp.val()
    assert (len(train), len(val)) == (12, 4)
    first = train[0]
    assert first.id == "mbpp-1"
    assert first.prompt == ("Write a function to return the sum of the squares of a list of integers.\n"
                            "Your code should pass this test:\nassert sum_of_squares([1, 2, 3]) == 14")
    assert first.meta["tests"].tests.count("assert") == 3  # all of them run, one is shown
    assert first.meta["tests"].bind == (("sum_of_squares", "sum_of_squares"),)
    circle = next(e for e in train if e.id == "mbpp-10")  # the tests use math.isclose without importing math
    assert circle.meta["tests"].context == "import math\n"
    helper = next(e for e in train if e.id == "mbpp-12")  # test_setup_code defines squares(): it is not the program's
    assert helper.meta["tests"].bind == (("total", "total"),) and "def squares" in helper.meta["tests"].context
    assert helper.steps[1] == "    # add them one by one\n    result = 0"  # a comment goes with the statement after it
    for example in train + val:
        assert same_program(unfenced(example.solution), example.answer), example.id
    shown = MBPP(path=str(FIXTURES / "mbpp"), val_size=None, shown_tests=3).train()[0].prompt
    assert "these tests:" in shown and shown.count("assert") == 3


def test_stdio_rows_keep_their_cases_and_python_solutions_give_steps():
    stdio = CodeStdio(path=str(FIXTURES / "stdio"), val_size=2)
    train, val = stdio.train(), stdio.val()
    assert [e.id for e in train] == ["sum-two", "max-of-n", "reverse-line", "count-up"] and [e.id for e in val] == ["prime", "words-cpp"]
    assert train[0].meta["tests"].kind == "stdio" and train[0].meta["tests"].cases[0] == ("1 2\n", "3\n")
    assert train[2].meta["tests"].cases == (("abc\n", "cba\n"), ("racecar\n", "racecar\n"))  # verification_info given as JSON text
    assert train[1].steps == (f"{FENCE}python\nn = int(input())", "nums = list(map(int, input().split()))", f"print(max(nums)){chr(10)}{FENCE}")
    assert val[1].steps == ()  # a C++ reference: no steps to guide with


def test_guidance_copies_whole_statements_in_the_answer_format():
    mbpp = MBPP(path=str(FIXTURES / "mbpp"), val_size=None)
    tokenizer = build_char_tokenizer(string.printable)
    guidance = ScheduledGuidance(guided_per_group=1, unit="steps", initial_length=2)
    train, _ = checked_splits(mbpp, lambda examples: [[0]] * len(examples), guidance)  # every problem has steps
    example = next(e for e in train if e.id == "mbpp-3")
    plan = guidance.plan([example], 2, tokenizer)
    assert plan.guided == [True, False]
    assert tokenizer.decode(plan.prefix_ids[0]) == f"{FENCE}python\ndef count_vowels(text):\n    count = 0\n"
    # A response is split into lines, as the reference is into statements.
    assert step_texts(example.solution, example.step_style, example.step_separator)[:3] == [FENCE + "python", "def count_vowels(text):", "count = 0"]


@pytest.mark.parametrize("row, message", [
    ({"task_id": 1, "text": "t", "code": "x = 1"}, "field 'test_list' must be a list of strings"),
    ({"task_id": 1, "text": "t", "code": "x = 1", "test_list": []}, "'test_list' is empty"),
    ({"task_id": 1, "text": "t", "code": "def f(:", "test_list": ["assert f()"]}, "not Python"),
    ({"task_id": 1, "text": "t", "code": "x = 1", "test_list": ["assert f("]}, "the tests are not Python"),
    ({"task_id": 1, "code": "x = 1", "test_list": ["assert f()"]}, "field 'prompt' is missing"),
])
def test_bad_mbpp_rows_name_the_row(tmp_path, row, message):
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"mbpp: .*train.jsonl, split 'train', row 0: .*{message}"):
        MBPP(path=str(tmp_path)).train()


@pytest.mark.parametrize("change, message", [
    ({"verification_info": "not json"}, "is text but not JSON"),
    ({"verification_info": {"test_cases": []}}, "non-empty list 'test_cases'"),
    ({"verification_info": {"test_cases": [{"type": "function_call", "fn_name": "f", "input": "1", "output": "1"}]}}, "must be a stdin_stdout case"),
    ({"verification_info": {"test_cases": [{"input": 1, "output": "1"}]}}, "must be a stdin_stdout case"),
    ({"problem_statement": None, "prompt": "x"}, r"no field 'problem_statement' \(data.prompt_field\); the row has"),
])
def test_bad_stdio_rows_name_the_row(tmp_path, change, message):
    row = {"problem_id": "p", "problem_statement": "s", "verification_info": {"test_cases": [{"input": "", "output": ""}]}, **change}
    if row["problem_statement"] is None:
        del row["problem_statement"]
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"code_stdio: .*train.jsonl, split 'train', row 0: .*{message}"):
        CodeStdio(path=str(tmp_path), val_size=0).train()


def test_fenced_code_takes_the_last_python_block_or_an_open_one():
    two = f"Here:\n{FENCE}python\nx = 1\n{FENCE}\nthen\n{FENCE}py\ny = 2\n{FENCE}\nand output\n{FENCE}text\nz\n{FENCE}\n"
    assert fenced_code(two) == "y = 2\n"
    assert fenced_code(f"{FENCE}python\ndef f():\n    return 1") == "def f():\n    return 1\n"  # cut off by the budget
    assert fenced_code(f"{FENCE}\nx = 1\n{FENCE}") == "x = 1\n"  # untagged
    assert fenced_code(f"{FENCE}python\nx = 1{FENCE}") == "x = 1\n"  # closed at the end of a code line
    assert fenced_code(f"{FENCE}cpp\nint x;\n{FENCE}") is None and fenced_code("x = 1") is None


def test_reference_steps_are_statements():
    code = "import os\n\n@staticmethod\ndef f(a,\n      b):\n    '''doc\n\n    more'''\n    return (a +\n            b)  # sum\n# trailing\n"
    steps = reference_steps(code)
    assert steps == (
        f"{FENCE}python\nimport os", "@staticmethod", "def f(a,\n      b):", "    '''doc\n\n    more'''",
        f"    return (a +\n            b)  # sum\n# trailing\n{FENCE}",
    )
    assert same_program(unfenced("\n".join(steps)), code)
    assert reference_steps("   \n") == ()
    with pytest.raises(ValueError, match="not Python"):
        reference_steps("def f():\n  x = (\n")


def test_free_names_split_modules_from_the_programs_functions():
    assert free_names("assert math.isclose(area(2), 4)\nassert helper(x) == sorted([1])\n", "x = 3\ndef helper(v):\n    return v\n") == (["area"], ["math"])


def test_outputs_match_ignores_trailing_spaces_and_blank_end_lines():
    assert outputs_match("1 2 \n3\n\n", "1 2\n3")
    assert not outputs_match("1  2\n", "1 2\n") and not outputs_match("3\n", "3\n4\n")


@pytest.mark.parametrize("data", ["humaneval", "mbpp", "code_stdio"])
def test_code_presets_pick_the_code_reward_and_the_llm_judge(data):
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"data={data}", "guidance=adaptive", "advantage=sgpo", "judge=llm", "model=smollm2_135m"])
    assert cfg.reward._target_ == "rlvr.rewards.code.CodeReward" and cfg.reward.sandbox.isolation == "bwrap"
    assert cfg.advantage.judge._target_.endswith("LLMJudge") and cfg.rollout.max_new_tokens == cfg.data.max_new_tokens
