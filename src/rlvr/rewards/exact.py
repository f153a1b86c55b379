"""Exact-match reward for the arithmetic task: the text after the last '#' must equal the answer."""

from __future__ import annotations

from rlvr.batch import Example
from rlvr.data.arithmetic import final_answer
from rlvr.rewards.base import Reward, Score


class ExactAnswerReward(Reward):
    """1.0 / correct when the completion's final answer equals the example's, both stripped; else 0.0.

    A completion that never writes the answer mark scores 0 (a wrong answer, not an error).
    """

    def score(self, completion: str, example: Example) -> Score:
        given = final_answer(completion)
        correct = given is not None and given == example.answer.strip()
        return Score(1.0 if correct else 0.0, correct)
