"""The arithmetic answer grammar (rlvr.data.arithmetic.final_answer): every tolerated form is read, no form that
continues the number into another one is, and the exact reward and the rule judge agree on all of them."""

import pytest

from rlvr.data.arithmetic import final_answer, make_example
from rlvr.data.steps import step_texts
from rlvr.judges.rule import RuleJudge
from rlvr.rewards.exact import ExactAnswerReward

EXAMPLE = make_example([12, 34, 5], "e")  # 12+34=46;46+5=51#51
STEPS = "12+34=46;46+5=51"

READ_AS_51 = [
    "#51", "# 51 ", "#51.", "#51\n", "#51, since 46+5=51", "#51<eos>", "#51<|im_end|>", "#51</s>", "#51.<|im_end|>",
    "#51 <|endoftext|>", "#51\nDone!", "#51. Done.", ". the answer is 51.", ". The answer is: 51", "#51;", "#51 ;",
]
NOT_51 = [
    "#51e2", "#51E2", "#51e+2", "#51²", "#51½", "#51x2", "#51 x 2", "#51．9", "#51..9", "#51 .9", "#51;52", "#51, 52",
    "#51:52", "#51,\n52", "#51;52;", "#51; done", "#51 ; done", "#51.9", "#51+1", "#51 + 1", "#5,1", "#51 52", "#51=52",
    "#51\n52", "#51. 52", "#51,", "#51!", ". the answer is 51; 52", ". the answer is 51.9",
]


@pytest.mark.parametrize("tail", READ_AS_51)
def test_tolerated_forms_are_read(tail):
    assert final_answer(STEPS + tail) == "51"


@pytest.mark.parametrize("tail", NOT_51)
def test_other_numbers_are_never_read_as_51(tail):
    assert final_answer(STEPS + tail) is None


@pytest.mark.parametrize("text, expected", [
    ("#1,000", "1000"), ("#1,000.", "1000"), ("#10,00", None), ("#1,0000", None), ("#-3", "-3"),
    ("...=586#586", "586"),  # the embedded model's answer, right after the last step
    ("#50 then #51", "51"), ("The answer is 50, not 51", "50"), ("no answer", None), ("#", None),
])
def test_numbers(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize("tail", READ_AS_51 + NOT_51)
def test_reward_and_rule_judge_agree(tail):
    completion = STEPS + tail
    _, correct, _ = ExactAnswerReward()([completion], [EXAMPLE])
    steps = step_texts(completion, EXAMPLE.step_style, EXAMPLE.step_separator)
    judged_right = RuleJudge.first_error(EXAMPLE, steps) is None
    assert correct.tolist() == [judged_right] == [tail in READ_AS_51]
