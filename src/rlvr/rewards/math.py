"""Math answer reward: the completion's final answer is checked against the reference with math-verify.

math-verify extracts the answer (`\\boxed{}`, "the answer is ...", a bare number), parses it to SymPy
and compares symbolically and numerically, so `\\frac{1}{2}` matches a reference of `0.5`.
"""

from __future__ import annotations

import logging
import re
import threading

from math_verify import parse, verify

from rlvr.batch import Example
from rlvr.options import check
from rlvr.rewards.base import Reward, Score

log = logging.getLogger(__name__)

_DELIMITER = re.compile(r"(?<!\\)\$")  # a math delimiter: a `$` that is not the escaped dollar sign `\$`
# What is not read as letters of a formula: commands (\angle, \begin{pmatrix}) and text in \text{...}-like boxes.
_NOT_FORMULA = re.compile(
    r"\\(?:text|textbf|textit|textnormal|textrm|textsf|texttt|emph|hbox|mbox|mathrm|mathbf|operatorname|begin|end)"
    r"\s*\{[^{}]*\}|\\[A-Za-z]+"
)
# A word math-verify would read as a product of letters: a lowercase run of four letters or more, or a short number
# word. Capitals and shorter runs are names and variables (ABC, \triangle ABC, xyz, 3abc), never refused.
_WORD = re.compile(r"(?<![A-Za-z])(?:[a-z]{4,}|(?:one|two|six|ten)(?![A-Za-z]))")


class MathVerifyReward(Reward):
    """1.0 / correct when math-verify finds the completion's answer equal to the example's answer.

    `timeout_seconds` bounds each parse and comparison. math-verify enforces it with SIGALRM, which only
    works in the main thread; elsewhere (e.g. a reward worker thread) this runs without a limit instead
    of failing, and says so once in the log. null disables the limit everywhere.
    A reference answer that math-verify cannot parse is an error (handled by `on_error`): it is a data
    problem, and scoring every completion 0 would hide it. An unparsable completion is simply wrong.
    """

    def __init__(self, on_error: str = "raise", timeout_seconds: int | None = 5):
        super().__init__(on_error)
        self.timeout_seconds = check("reward.timeout_seconds", timeout_seconds, integer=True, low=1, optional=True)
        self._gold: dict[str, list] = {}  # reference answer -> parsed; each group repeats its example
        self._checked: dict[str, str | None] = {}  # reference answer -> check_reference's verdict
        self._warned_thread = False

    def _timeout(self) -> int | None:
        if self.timeout_seconds is None or threading.current_thread() is threading.main_thread():
            return self.timeout_seconds
        if not self._warned_thread:
            log.warning("MathVerifyReward runs outside the main thread: math-verify's timeout (signal alarm) is off")
            self._warned_thread = True
        return None

    def gold(self, answer: str, timeout: int | None) -> list:
        if answer not in self._gold:
            # A bare reference like "\frac{1}{2}" only parses as LaTeX inside math delimiters; an escaped dollar sign
            # (MATH's "\$18.90") is a unit, not a delimiter.
            text = answer if _DELIMITER.search(answer) or "\\boxed" in answer else f"${answer}$"
            parsed = parse(text, parsing_timeout=timeout)
            if not any(not isinstance(p, str) for p in parsed):  # only the raw text back: nothing was understood
                raise ValueError(f"math-verify could not parse the reference answer {answer!r}")
            self._gold[answer] = parsed
        return self._gold[answer]

    def check_reference(self, example: Example) -> str | None:
        """Refuses a reference math-verify cannot parse (`???`, `\\frac{`), one that is a word read as a product of
        letters (`seventy-two`; words belong in \\text{...}: see _WORD), and one that `\\boxed{answer}` is not scored right on."""
        if example.answer not in self._checked:  # the verdict depends on the answer alone; GSM8K's repeat often
            self._checked[example.answer] = self._check_answer(example)
        return self._checked[example.answer]

    def _check_answer(self, example: Example) -> str | None:
        try:
            self.gold(example.answer, self._timeout())
        except ValueError as err:
            return str(err)
        if _WORD.search(_NOT_FORMULA.sub("", example.answer)):
            return "it holds a word outside \\text{...}, which math-verify reads as a product of single letters"
        if not self.score(self.answer_completion(example.answer), example).correct:
            return "the completion \\boxed{<reference answer>} is not scored right"
        return None

    def answer_completion(self, answer: str) -> str:
        return f"\\boxed{{{answer}}}"

    def score(self, completion: str, example: Example) -> Score:
        timeout = self._timeout()
        gold = self.gold(example.answer, timeout)
        prediction = parse(completion, parsing_timeout=timeout)
        correct = bool(prediction) and verify(gold, prediction, timeout_seconds=timeout)
        return Score(1.0 if correct else 0.0, correct)
