"""Exact-match reward for the arithmetic task: the text after the last '#' must equal the answer."""

from __future__ import annotations

from rlvr.batch import Example
from rlvr.data.arithmetic import ANSWER_MARK, final_answer
from rlvr.rewards.base import Reward, Score


class ExactAnswerReward(Reward):
    """1.0 / correct when the completion's final answer equals the example's, both stripped; else 0.0.

    A completion that never writes the answer mark scores 0 (a wrong answer, not an error).
    """

    def score(self, completion: str, example: Example) -> Score:
        given = final_answer(completion)
        correct = given is not None and given == example.answer.strip()
        return Score(1.0 if correct else 0.0, correct)

    def check_reference(self, example: Example) -> str | None:
        if final_answer(self.answer_completion(example.answer)) != example.answer.strip():
            return "not an integer the reward reads after '#' (digits, no thousands commas): no completion can match it"
        return None

    def answer_completion(self, answer: str) -> str:
        return ANSWER_MARK + answer
