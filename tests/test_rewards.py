import inspect
import json
import re
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlvr.batch import Example
from rlvr.rewards.base import Reward, RewardError, Score
from rlvr.rewards.exact import ExactAnswerReward
from rlvr.rewards.math import MathVerifyReward

ROOT = Path(__file__).parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()


def example(answer: str, example_id: str = "e0") -> Example:
    return Example(id=example_id, prompt="p", answer=answer)


def first_rows(relative: str, count: int) -> list[dict]:
    file = DATA / relative
    if not file.is_file():
        pytest.skip(f"offline data copy {file} is missing (see /work/shared/data/README.md)")
    with file.open() as handle:
        return [json.loads(next(handle)) for _ in range(count)]


# --- exact answer (arithmetic task) ---


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("12+34=46;46+5=51#51", True),
        ("12+34=46;46+5=51# 51 ", True),  # both sides stripped
        ("12+34=46;46+5=52#52", False),
        ("12+34=46;46+5=51", False),  # never gave an answer
        ("#50 then #51", True),  # the last mark counts
        ("#51 then #50", False),
        ("#", False),
        ("12+34=46;46+5=51\n#51.\nDone!", True),  # text around the checkable answer is ignored
        ("Adding up: the answer is 51.", True),  # no '#': "the answer is" counts
        ("The answer is 50, not 51", False),  # the number right after it, not any number later
        ("#5 1", False),  # digits split by a space are not the answer
        ("#abc 51", False),  # after the mark there must be a number
        # Tolerated forms stay, but what follows the number must not make it another number:
        ("#51, since 46+5=51", True),
        ("#51.9", False), ("#51+1", False), ("#51 + 1", False), ("#5,1", False), ("#51 52", False), ("#51=52", False),
        ("The answer is 51.9", False), ("the answer is 51. No, the answer is 52", False),  # the last "answer is" counts
    ],
)
def test_exact_answer(completion, expected):
    rewards, correct, errors = ExactAnswerReward()([completion], [example(" 51")])
    assert rewards.tolist() == [1.0 if expected else 0.0]
    assert correct.tolist() == [expected]
    assert errors == 0


@pytest.mark.parametrize("completion, expected", [
    ("#1000", True), ("#1,000", True), ("# 1,000.", True),  # thousands commas in groups of three
    ("#10,00", False), ("#1,0000", False), ("#1,000.5", False), ("#100,0", False), ("#1000 1", False),
])
def test_exact_answer_thousands_groups_must_be_whole(completion, expected):
    assert ExactAnswerReward()([completion], [example("1000")])[1].tolist() == [expected]


# --- math-verify ---


@pytest.fixture(scope="module")
def math_reward():
    return MathVerifyReward()


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("\\boxed{18}", "18", True),
        ("The answer is 18", "18", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("#### 18", "18", True),
        ("So she makes $18. The answer is \\boxed{70,000}", "70000", True),
        ("\\boxed{19}", "18", False),
        ("I do not know.", "18", False),
        ("", "18", False),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ],
)
def test_math_verify_typical_answers(math_reward, completion, gold, expected):
    assert math_reward.score(completion, example(gold)) == Score(1.0 if expected else 0.0, expected)


def gsm8k_answer(row: dict) -> str:
    return row["answer"].rsplit("####", 1)[1].strip().replace(",", "")


def test_math_verify_on_gsm8k_rows(math_reward):
    rows = first_rows("gsm8k/test.jsonl", 50)
    gold = [gsm8k_answer(row) for row in rows]
    good = [f"Let me think. ... The final answer is \\boxed{{{answer}}}" for answer in gold]
    bad = [f"Let me think. ... The final answer is \\boxed{{{Decimal(answer) + 1}}}" for answer in gold]
    examples = [example(answer, f"gsm8k-{i}") for i, answer in enumerate(gold)]
    rewards, correct, errors = math_reward(good + bad, examples + examples)
    assert rewards.tolist() == [1.0] * 50 + [0.0] * 50
    assert correct.tolist() == [True] * 50 + [False] * 50
    assert errors == 0


def test_math_verify_on_math500_rows(math_reward):
    rows = first_rows("math500/test.jsonl", 50)
    examples = [example(row["answer"], row["unique_id"]) for row in rows]
    good = [f"... The final answer is \\boxed{{{row['answer']}}}" for row in rows]
    bad = [f"... The final answer is \\boxed{{{row['answer']}+1}}" for row in rows]  # a different expression
    rewards, correct, errors = math_reward(good + bad, examples + examples)
    wrong_good = [row["answer"] for row, ok in zip(rows, correct[:50].tolist()) if not ok]
    wrong_bad = [row["answer"] for row, ok in zip(rows, correct[50:].tolist()) if ok]
    assert (wrong_good, wrong_bad) == ([], [])
    assert rewards.sum().item() == 50.0
    assert errors == 0


def test_math_verify_outside_main_thread_runs_without_alarm():
    reward, results = MathVerifyReward(timeout_seconds=5), []

    def work():  # math-verify's own alarm would raise ValueError in this thread
        results.append(reward.score("\\boxed{\\frac{1}{2}}", example("0.5")))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results == [Score(1.0, True)]


def test_math_verify_unparsable_reference_is_an_error():
    reward = MathVerifyReward(on_error="raise")
    with pytest.raises(RewardError, match=re.escape("MathVerifyReward failed on sample 0 (example 'bad-ref'")) as info:
        reward(["\\boxed{1}"], [example("", "bad-ref")])
    assert "could not parse the reference answer ''" in str(info.value)
    rewards, correct, errors = MathVerifyReward(on_error="zero")(["\\boxed{1}", "\\boxed{1}"], [example(""), example("1")])
    assert (rewards.tolist(), correct.tolist(), errors) == ([0.0, 1.0], [False, True], 1)


@pytest.mark.parametrize("value", [0, -1, 2.5, "5"])
def test_math_verify_rejects_bad_timeout(value):
    with pytest.raises(ValueError, match=re.escape(f"reward.timeout_seconds must be an integer >= 1 or null, got {value!r}")):
        MathVerifyReward(timeout_seconds=value)


# --- on_error policy ---


class ExplodingReward(Reward):
    """Scores 1 except on completions containing 'boom', where it raises."""

    def score(self, completion: str, example: Example) -> Score:
        if "boom" in completion:
            raise KeyError("no answer here")
        return Score(1.0, True)


def test_on_error_raise_names_the_sample():
    reward = ExplodingReward(on_error="raise")
    with pytest.raises(RewardError) as info:
        reward(["fine", "boom!"], [example("1", "first"), example("1", "second")])
    message = str(info.value)
    assert message.startswith("ExplodingReward failed on sample 1 (example 'second', completion 'boom!'): KeyError('no answer here')")
    assert "reward.on_error=zero" in message
    assert isinstance(info.value.__cause__, KeyError)


def test_on_error_zero_scores_and_counts():
    rewards, correct, errors = ExplodingReward(on_error="zero")(["boom", "ok", "boom"], [example("1")] * 3)
    assert rewards.tolist() == [0.0, 1.0, 0.0]
    assert correct.tolist() == [False, True, False]
    assert errors == 2


def test_on_error_rejects_unknown_policy():
    with pytest.raises(ValueError, match=re.escape("reward.on_error must be one of raise | zero, got 'skip'")):
        ExactAnswerReward(on_error="skip")


# --- configs ---


@pytest.mark.parametrize("name, cls", [("math", MathVerifyReward), ("exact", ExactAnswerReward)])
def test_reward_yaml_lists_every_option_with_its_default(name, cls):
    config = OmegaConf.load(ROOT / "conf" / "reward" / f"{name}.yaml")
    options = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert {k: v for k, v in config.items() if k != "_target_"} == options
    assert config.on_error == "raise"
    assert type(instantiate(config)) is cls
