from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlvr.batch import Example
from rlvr.data.arithmetic import make_example, target_text
from rlvr.data.steps import step_texts
from rlvr.judges.base import Verdict
from rlvr.judges.rule import RuleJudge

EXAMPLE = make_example([12, 34, 5], "e")  # 12+34=46;46+5=51#51


def first_error(response: str, example: Example = EXAMPLE) -> int | None:
    steps = step_texts(response, example.step_style, example.step_separator)
    (verdict,) = RuleJudge()([example], [steps])
    assert verdict.parsed
    return verdict.first_error


@pytest.mark.parametrize(
    "response, expected",
    [
        ("12+34=46;46+5=51#51", None),  # all right
        (" 12 + 34 = 46 ; 46+5=51 # 51 ", None),  # whitespace is ignored
        ("12+34=46;46+5=51;#51", None),  # a last piece that is only the answer is not a step
        ("12+34=47;47+5=52#52", 0),  # first step wrong; later steps consistent with it still count as after it
        ("12+34=46;46+5=52#52", 1),  # second step wrong
        ("12+34=46;46+6=52#52", 1),  # wrong term copied
        ("34+12=46;46+5=51#51", 0),  # terms out of order
        ("12+34=46;46+5=51;51+0=51#51", 2),  # an extra step is an error where it starts
        ("12+34=46#46", 0),  # too few steps: error at the last step present
        ("12+34=46;#46", 1),  # too few steps, answer alone: the last piece
        ("12+34=46;46+5=51", 1),  # all steps right, answer missing
        ("12+34=46;46+5=51#50", 1),  # all steps right, answer wrong
        ("#51", 0),  # no steps at all
        ("12+34=46#46;46+5=51#51", 0),  # an answer mark inside a non-final step makes it wrong
        ("", 0),  # empty response
        # What a pretrained model writes around the checkable part:
        ("Sure! 12+34=46;\n46+5=51\n#51.", None),  # a preamble, newlines, a full stop after the answer
        ("12+34=46;46+5=51. The answer is 51.", None),  # "the answer is" instead of '#'
        ("12+34=46;46+5=51. The answer is 50.", 1),
        ("12+34=46;then I add five", 1),  # a step with no equation is wrong where it stands
        # Right steps, then an answer that only starts like 51: wrong at the last piece, never accepted
        ("12+34=46;46+5=51#51.9", 1), ("12+34=46;46+5=51#51+1", 1), ("12+34=46;46+5=51#5,1", 1), ("12+34=46;46+5=51#51 52", 1),
        ("12+34=46;46+5=51. The answer is 51.9", 1),
    ],
)
def test_first_error(response, expected):
    assert first_error(response) == expected


def test_reference_is_recomputed_not_trusted():
    # A corrupted reference solution does not change what counts as right.
    bad_reference = Example(id="x", prompt="12+34+5=", answer="52", steps=("12+34=47", "47+5=52"), step_separator=";", step_style="separator")
    assert first_error("12+34=46;46+5=51#51", bad_reference) is None
    assert first_error("12+34=47;47+5=52#52", bad_reference) == 0


def test_every_reference_target_is_right():
    for terms in ([1, 2], [99, 1, 1, 50], [7, 8, 9, 10, 11, 12]):
        example = make_example(terms, "t")
        assert first_error(target_text(example), example) is None


def test_batched_call_and_cache():
    judge = RuleJudge()
    other = make_example([1, 2], "o")
    verdicts = judge([EXAMPLE, other, EXAMPLE], [["12+34=46", "46+5=50#50"], ["1+2=3#3"], ["12+34=46", "46+5=50#50"]])
    assert verdicts == [Verdict(1), Verdict(None), Verdict(1)]
    assert len(judge._cache) == 2  # the repeated response is judged once


def test_non_arithmetic_prompt_is_a_clear_error():
    example = Example(id="gsm-1", prompt="How many eggs?", answer="3")
    with pytest.raises(ValueError, match=r"RuleJudge checks only the arithmetic task; example 'gsm-1': not an arithmetic prompt"):
        RuleJudge()([example], [["3"]])


def test_config_instantiates():
    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "judge" / "rule.yaml")
    judge = instantiate(cfg)
    assert isinstance(judge, RuleJudge) and judge.cache_size == 100_000
