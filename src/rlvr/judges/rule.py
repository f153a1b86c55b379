"""Exact step-wise judge for the arithmetic task: recomputes every partial sum, trusts no reference text."""

from __future__ import annotations

import re

from rlvr.batch import Example
from rlvr.data.arithmetic import ANSWER_MARK, parse_terms
from rlvr.judges.base import Judge, Verdict

_SPACE = re.compile(r"\s+")


class RuleJudge(Judge):
    """First wrong step of a response to `12+34+5=`, given as its `;`-separated steps.

    Step i is right iff it reads `{total_i}+{term_i+1}={total_i+1}` (whitespace ignored); the last step
    may end in `#answer` (a last piece that is only `#answer` is the answer, not a step). An extra
    step is wrong where it starts; too few steps, or right steps with a missing or wrong answer, are
    wrong at the last piece of the response (where it stopped short); an empty response at step 0.
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
        bodies = [_SPACE.sub("", p) for p in pieces]
        answer = None
        if ANSWER_MARK in bodies[last]:
            bodies[last], answer = bodies[last].split(ANSWER_MARK, 1)
        total, needed, done = terms[0], len(terms) - 1, 0
        for i, body in enumerate(bodies):
            if i == last and not body and answer is not None:
                break  # "...;#51": the answer alone, not a step
            if i >= needed:
                return i  # a step past the needed ones
            if body != f"{total}+{terms[i + 1]}={total + terms[i + 1]}":
                return i
            total, done = total + terms[i + 1], done + 1
        if done < needed or answer != str(total):
            return last
        return None
