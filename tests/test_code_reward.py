"""reward=code: programs extracted from completions, scored through the sandbox, in parallel, in order."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlvr.batch import Example
from rlvr.data.code import FENCE, CodeStdio, CodeTests, HumanEval, MBPP
from rlvr.rewards.base import RewardError
from rlvr.rewards.code import CodeReward, program_of
from rlvr.rewards.sandbox import Sandbox

FIXTURES = Path(__file__).parent / "fixtures" / "code"
HUMANEVAL = FIXTURES / "humaneval" / "HumanEval.jsonl.gz"


@pytest.fixture(scope="module")
def box():
    return Sandbox(timeout_seconds=2, cpu_seconds=2)


@pytest.fixture(scope="module")
def reward(box):
    return CodeReward(box, workers=2)


def fenced(code: str, before: str = "Here is my solution:\n", after: str = "\nIt loops once.") -> str:
    return f"{before}{FENCE}python\n{code}\n{FENCE}{after}"


@pytest.mark.slow
def test_every_canonical_humaneval_solution_passes_and_an_empty_body_fails(reward):
    problems = HumanEval(path=str(HUMANEVAL)).val()
    with gzip.open(HUMANEVAL, "rt") as handle:
        canonical = [json.loads(line)["canonical_solution"] for line in handle]
    rewards, correct, errors = reward(canonical + [""] * len(problems), problems + problems)
    assert errors == 0
    passed = rewards[: len(problems)]
    assert passed.tolist() == [1.0] * 164, [p.id for p, r in zip(problems, passed) if r != 1.0]
    assert rewards[len(problems) :].tolist() == [0.0] * 164 and correct[len(problems) :].sum() == 0
    assert reward.last_metrics["reward/timeouts"] == 0 and reward.last_metrics["reward/seconds"] > 0


def test_the_program_is_the_last_fenced_block_or_the_body_that_continues_the_prompt():
    given = CodeTests("assert", prefix="def f(x):\n    '''Double x.'''\n")
    whole = CodeTests("assert")
    answer = fenced("def f(x):\n    return 2 * x")
    assert program_of(answer, given) == "def f(x):\n    '''Double x.'''\n\ndef f(x):\n    return 2 * x\n"
    assert program_of("    return 2 * x\n", given) == "def f(x):\n    '''Double x.'''\n    return 2 * x\n"
    assert program_of(answer, whole) == "def f(x):\n    return 2 * x\n"
    assert program_of("x = 1", whole) == "x = 1"


def test_humaneval_answers_in_a_block_and_as_a_body_both_count(reward):
    problem = HumanEval(path=str(HUMANEVAL)).val()[2]  # truncate_number: return number % 1.0
    answers = [
        fenced("def truncate_number(number: float) -> float:\n    return number % 1.0"),
        "    return number % 1.0\n",
        fenced("def truncate_number(number: float) -> float:\n    return int(number)"),
        "I cannot solve this.",
    ]
    rewards, correct, _ = reward(answers, [problem] * 4)
    assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0] and correct.tolist() == [True, True, False, False]


def test_mbpp_runs_every_assert_not_just_the_shown_one(reward):
    problem = MBPP(path=str(FIXTURES / "mbpp"), val_size=None).train()[6]  # fib; shown: fib(0) == 0
    answers = [
        fenced("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
        fenced("def fib(n):\n    return 0"),  # passes the shown assert only
        fenced("def fib(n)\n    return n"),  # syntax error
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",  # no block: the completion is the program
        fenced("def fibonacci(n):\n    return 0"),  # wrong name
    ]
    rewards, _, errors = reward(answers, [problem] * len(answers))
    assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0] and errors == 0


def test_stdio_scores_the_share_of_cases_or_all_or_nothing(box):
    problem = CodeStdio(path=str(FIXTURES / "stdio"), val_size=2).val()[0]  # prime: 7 YES, 9 NO, 2 YES
    answers = [fenced("n = int(input())\nprint('YES' if all(n % d for d in range(2, n)) else 'NO')"),
               fenced("print('YES')"), fenced("import sys\nsys.exit(3)")]
    partial = CodeReward(box, workers=2)
    rewards, correct, _ = partial(answers, [problem] * 3)
    assert rewards.tolist() == pytest.approx([1.0, 2 / 3, 0.0]) and correct.tolist() == [True, False, False]
    strict = CodeReward(box, workers=2, partial_credit=False)
    assert strict(answers, [problem] * 3)[0].tolist() == [1.0, 0.0, 0.0]


def test_outcomes_stay_in_order_and_timeouts_are_counted(reward):
    problem = MBPP(path=str(FIXTURES / "mbpp"), val_size=None).train()[0]  # sum_of_squares
    good = fenced("def sum_of_squares(nums):\n    return sum(n * n for n in nums)")
    slow = fenced("import time\ndef sum_of_squares(nums):\n    time.sleep(60)")
    answers = [good, slow, fenced("def sum_of_squares(nums):\n    return 0"), good]
    rewards, correct, errors = reward(answers, [problem] * 4)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0] and errors == 0
    assert reward.last_metrics["reward/timeouts"] == 1.0 and reward.last_metrics["reward/seconds"] >= 2


def test_sandbox_and_data_problems_are_errors_not_fails(box):
    broken = Example(id="broken", prompt="", answer="", meta={"tests": CodeTests("assert", context="raise RuntimeError('bad data')", tests="")})
    plain = Example(id="math", prompt="1+1", answer="2")
    with pytest.raises(RewardError, match=r"example 'broken'.*the tests' context failed: RuntimeError: bad data"):
        CodeReward(box)(["x = 1"], [broken])
    with pytest.raises(RewardError, match=r"example 'math'.*needs a code data set"):
        CodeReward(box)(["x = 1"], [plain])
    rewards, correct, errors = CodeReward(box, on_error="zero")(["x = 1", "x = 1"], [broken, plain])
    assert rewards.tolist() == [0.0, 0.0] and errors == 2


def test_bad_options_name_themselves(box):
    with pytest.raises(ValueError, match="reward.workers"):
        CodeReward(box, workers=0)
    with pytest.raises(ValueError, match="reward.partial_credit"):
        CodeReward(box, partial_credit="yes")
