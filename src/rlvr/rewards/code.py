"""Code reward: the completion's program, run against the problem's tests in the sandbox.

The program is the last ```python block of the completion (or one left open at the end, cut off by the token
budget); without a block, the completion itself: for problems whose prompt gives code to continue
(HumanEval's signature and docstring), that code plus the completion as the function's body.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from torch import Tensor

from rlvr.batch import Example
from rlvr.data.code import FENCE, CodeTests, fenced_code, outputs_match
from rlvr.options import check
from rlvr.rewards.base import Reward, Score
from rlvr.rewards.sandbox import Sandbox

log = logging.getLogger(__name__)
RECHECK_FACTOR = 4  # a reference solution that timed out in the parallel check runs again alone with 4x the limit


def program_of(completion: str, tests: CodeTests) -> str:
    """The program a completion stands for (see the module's docstring)."""
    code = fenced_code(completion)
    if code is None:
        return tests.prefix + completion
    return f"{tests.prefix}\n{code}" if tests.prefix else code


class CodeReward(Reward):
    """Assert problems (HumanEval, MBPP): 1.0 / correct when the tests run to the end, else 0.0.
    stdin/stdout problems: the share of cases whose output matches (`partial_credit`; else 1.0 only when all
    do), correct when all do. A timeout, a crash or a program that breaks the rules is a fail, never an error;
    errors (handled by `on_error`) are problems of the sandbox or the data.

    `workers` programs run at once (null: one per CPU core). After each call, `last_metrics` holds
    `reward/seconds` (wall time of the call, all sandboxes) and `reward/timeouts` (programs killed at their limit).
    """

    def __init__(self, sandbox: Sandbox, workers: int | None = None, partial_credit: bool = True, on_error: str = "raise"):
        super().__init__(on_error)
        self.sandbox = sandbox
        self.workers = check("reward.workers", workers, integer=True, low=1, optional=True)
        if not isinstance(partial_credit, bool):
            raise ValueError(f"reward.partial_credit must be true or false, got {partial_credit!r}")
        self.partial_credit = partial_credit
        self._ready = None  # the outcomes of the batch being scored, in order (see __call__)

    def __call__(self, completions: list[str], examples: list[Example]) -> tuple[Tensor, Tensor, int]:
        # The programs run in parallel first; the base class then reads their outcomes in order through
        # `score`, so its on_error policy applies to each sample as for any reward.
        start = time.perf_counter()
        with ThreadPoolExecutor(self.workers) as pool:
            outcomes = list(pool.map(self._attempt, completions, examples))
        self._ready = iter(outcome for outcome, _ in outcomes)
        try:
            result = super().__call__(completions, examples)
        finally:
            self._ready = None
        self.last_metrics = {"reward/seconds": time.perf_counter() - start,
                             "reward/timeouts": float(sum(timed_out for _, timed_out in outcomes))}
        return result

    def check_references(self, examples: list[Example]) -> list[str | None]:
        """Each problem's reference solution, run once against its own tests in the sandbox (in parallel): a test that
        raises or expects a wrong value fails it, and would score every program 0. Rows without a Python reference
        solution (code_stdio may lack one, or give another language's) cannot be checked and pass.

        A timeout says more about the machine's load than about the row, and every rank of a run must reach the same
        verdict: rows that time out are run again one at a time with RECHECK_FACTOR times the limit, and a row that
        still times out could not be checked: it is kept (counted in a warning), never a bad row."""
        with ThreadPoolExecutor(self.workers) as pool:
            verdicts = list(pool.map(self._check_reference, examples))
        unchecked = []
        for i, (_, timed_out) in enumerate(verdicts):
            if timed_out:
                verdicts[i] = self._check_reference(examples[i], self.sandbox.timeout * RECHECK_FACTOR)
                if verdicts[i][1]:
                    unchecked.append(examples[i].id)
                    verdicts[i] = (None, True)
        if unchecked:
            log.warning("%d reference solutions timed out even alone with %g s: kept, unchecked (the first: %s)",
                        len(unchecked), self.sandbox.timeout * RECHECK_FACTOR, ", ".join(map(repr, unchecked[:5])))
        return [why for why, _ in verdicts]

    def check_reference(self, example: Example) -> str | None:
        return self.check_references([example])[0]

    def _check_reference(self, example: Example, timeout: float | None = None) -> tuple[str | None, bool]:
        """Why the row's reference solution fails its tests (None: it passes, or there is none), and whether a time
        limit stopped it (then the verdict says nothing)."""
        tests = example.meta.get("tests")
        if not isinstance(tests, CodeTests):
            return "it has no tests (reward=code needs a code data set: data=humaneval, mbpp or code_stdio)", False
        if not example.answer.strip() or example.meta.get("reference_is_python") is False:
            return None, False  # no Python reference to run
        program = program_of(f"{FENCE}python\n{example.answer}\n{FENCE}", tests)  # as a model's answer would be read
        if tests.kind == "assert":
            outcome = self.sandbox.run_asserts(program, tests.context, tests.tests, tests.bind, timeout=timeout)
            if outcome.timed_out:
                return None, True
            return (None if outcome.passed else f"its reference solution fails its own tests: {outcome.detail[:300]}"), False
        run = self.sandbox.run_stdio(program, [given for given, _ in tests.cases], timeout=timeout)
        if run.timed_out or any(case.timed_out for case in run.cases):
            return None, True
        failed = [i for i, (case, (_, expected)) in enumerate(zip(run.cases, tests.cases))
                  if not (case.returncode == 0 and outputs_match(case.stdout, expected))]
        if run.cases and not failed:
            return None, False
        which = f"test cases {failed[:5]}" if run.cases else "every test case"
        detail = run.detail or run.cases[failed[0]].stderr.strip()[-200:] or "wrong output"
        return f"its reference solution fails {which} of {len(tests.cases)}: {detail}", False

    def score(self, completion: str, example: Example) -> Score:
        if self._ready is None:
            return self.run(completion, example)[0]
        outcome = next(self._ready)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _attempt(self, completion: str, example: Example) -> tuple[Score | Exception, bool]:
        try:
            return self.run(completion, example)
        except Exception as exc:  # raised in order by `score`, where on_error decides
            return exc, False

    def run(self, completion: str, example: Example) -> tuple[Score, bool]:
        """Run one completion's program against its example's tests: its score, and whether a time limit killed it."""
        tests = example.meta.get("tests")
        if not isinstance(tests, CodeTests):
            raise ValueError(f"reward=code needs a code data set (data=humaneval, mbpp or code_stdio): example {example.id!r} has no tests")
        program = program_of(completion, tests)
        if tests.kind == "assert":
            outcome = self.sandbox.run_asserts(program, tests.context, tests.tests, tests.bind)
            return Score(float(outcome.passed), outcome.passed), outcome.timed_out
        run = self.sandbox.run_stdio(program, [given for given, _ in tests.cases])
        passed = sum(c.returncode == 0 and outputs_match(c.stdout, expected) for c, (_, expected) in zip(run.cases, tests.cases))
        correct = passed == len(tests.cases)
        timed_out = run.timed_out or any(c.timed_out for c in run.cases)
        return Score(passed / len(tests.cases) if self.partial_credit else float(correct), correct), timed_out
