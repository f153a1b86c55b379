"""Exact step-wise judge for the arithmetic task: recomputes every partial sum, trusts no reference text."""

from __future__ import annotations

import re

from rlvr.batch import Example
from rlvr.data.arithmetic import ANSWER_MARK, final_answer, parse_terms
from rlvr.judges.base import Judge, Verdict

_SPACE = re.compile(r"\s+")
_EQUATION = re.compile(r"(\d+)\+(\d+)=(-?\d+)")


class RuleJudge(Judge):
    """First wrong step of a response to `12+34+5=`, given as its `;`-separated steps.

    Step i is right iff the first `a+b=c` in it (whitespace ignored, other text around it allowed) is
    `{total_i}+{term_i+1}={total_i+1}`; the last step may end in the answer (`#51`, or "the answer is 51": see
    `final_answer`), and a last piece that holds only the answer is the answer, not a step. A step with no
    equation, an answer mark before the last step, or an extra step is wrong where it stands; too few steps, or right steps with a missing or
    wrong answer, are wrong at the last piece of the response (where it stopped short); an empty response
    at step 0.
    """

    def _judge(self, examples: list[Example], responses: list[list[str]]) -> list[Verdict]:
        return [Verdict(first_error=self.first_error(e, steps)) for e, steps in zip(examples, responses, strict=True)]

    @staticmethod
    def first_error(example: Example, pieces: list[str]) -> int | None:
        try:
            terms = parse_terms(example.prompt)
        except ValueError as exc:
            raise ValueError(f"RuleJudge checks only the arithmetic task; example {example.id!r}: {exc}") from exc
        if not pieces:
            return 0
        last = len(pieces) - 1
        answer = final_answer(pieces[last])
        bodies = [_SPACE.sub("", p) for p in pieces]
        bodies[last] = bodies[last].split(ANSWER_MARK, 1)[0]
        total, needed, done = terms[0], len(terms) - 1, 0
        for i, body in enumerate(bodies):
            equation = _EQUATION.search(body)
            if i == last and equation is None and answer is not None:
                break  # "...;#51": the answer alone, not a step
            if i >= needed:
                return i  # a step past the needed ones
            if equation is None or (i < last and ANSWER_MARK in body) or equation.groups() != (str(total), str(terms[i + 1]), str(total + terms[i + 1])):
                return i
            total, done = total + terms[i + 1], done + 1
        if done < needed or answer != str(total):
            return last
        return None
