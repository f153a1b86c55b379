"""Code problems checked by running tests: HumanEval, MBPP, and stdin/stdout problems (open-r1's format).

Each example carries its tests in `meta["tests"]` (a `CodeTests`), which `reward=code` runs in the sandbox.
Models are asked for one ```python block. The reference answer is the reference solution in such a block,
and its steps are the solution's statements (logical lines, indentation kept): the opening fence, and any
code the prompt gives (HumanEval's signature and docstring), go with the first statement, the closing
fence with the last. So a guided roll-out starts from whole statements in the answer format, and a
response is split into steps by lines (`step_style="lines"`), as a judge reads it.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import re
import sys
import tokenize
from dataclasses import dataclass
from typing import Any

from rlvr.batch import Example
from rlvr.data.hub import OneSplitTask, TwoSplitTask
from rlvr.options import check

FENCE = "```"
PYTHON_TAGS = frozenset({"", "python", "py", "python3"})
_FENCE_LINE = re.compile(r"[ \t]*`{3,}[ \t]*([\w+#.-]*)[ \t]*")
_CLOSING_AT_END = re.compile(r"`{3,}[ \t]*$")


@dataclass(frozen=True)
class CodeTests:
    """How a program for one problem is checked.

    kind "assert": the trusted `context` (imports, helpers, setup) then the trusted `tests` run in the sandbox's
    judge; each (test name, program name) of `bind` is the program's function the tests call. Pass = the
    tests ran to the end. kind "stdio": the program runs once per case's input; a case passes when its output
    matches the expected output (see `outputs_match`).
    `prefix` is code the completion continues (HumanEval's signature and docstring; "" for whole programs).
    """

    kind: str
    prefix: str = ""
    context: str = ""
    tests: str = ""
    bind: tuple[tuple[str, str], ...] = ()
    cases: tuple[tuple[str, str], ...] = ()  # stdio: (input, expected output)


def fenced_code(text: str) -> str | None:
    """The code of the last closed ```python (or untagged) block; without one, of a ```python block left open
    at the end (an answer cut off at the token budget); None when there is neither."""
    closed, tag, lines = [], None, None
    for line in text.splitlines():
        fence = _FENCE_LINE.fullmatch(line)
        if lines is None:
            if fence:
                tag, lines = fence[1].lower(), []
        elif fence and not fence[1]:
            closed.append((tag, lines))
            lines = None
        elif _CLOSING_AT_END.search(line):  # "    return x```": the block closes at the end of a code line
            closed.append((tag, [*lines, _CLOSING_AT_END.sub("", line)]))
            lines = None
        else:
            lines.append(line)
    python = [body for tag, body in closed if tag in PYTHON_TAGS]
    if python:
        return "\n".join(python[-1]) + "\n"
    if lines is not None and tag in PYTHON_TAGS:
        return "\n".join(lines) + "\n"
    return None


def reference_steps(code: str, given: str = "") -> tuple[str, ...]:
    """`given + code` as the steps of a fenced answer: one per statement of `code` (comments before a statement
    belong to it, comments after the last one to the last; blank lines between statements are dropped), `given`
    and the opening fence in the first step, the closing fence in the last.
    Code that is not Python (it cannot be tokenized) is a ValueError."""
    if not code.strip():
        return ()
    full = (given + code).replace("\r\n", "\n")
    starts = [0]
    for line in full.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    try:
        ends = [starts[t.end[0] - 1] + t.end[1] for t in tokenize.generate_tokens(io.StringIO(full).readline) if t.type == tokenize.NEWLINE]
    except (tokenize.TokenError, SyntaxError) as err:
        raise ValueError(f"the reference solution is not Python: {err}") from None
    cuts = [0, *(e for e in ends if e > len(given))]
    pieces = [re.sub(r"\A(?:[ \t]*\n)+", "", full[a:b]).rstrip() for a, b in zip(cuts, [*cuts[1:], len(full)])]
    if len(pieces) > 1 and pieces[-1]:  # comments after the last statement end it
        pieces[-2:] = [f"{pieces[-2]}\n{pieces[-1]}"]
    steps = [p for p in pieces if p]
    if not steps:
        return ()
    steps[0] = f"{FENCE}python\n{steps[0]}"
    steps[-1] = f"{steps[-1]}\n{FENCE}"
    return tuple(steps)


def outputs_match(output: str, expected: str) -> bool:
    """Whether a program's output is the expected one: equal after trailing whitespace is removed from each line
    and blank lines are removed from both ends."""
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    return lines(output) == lines(expected)


def free_names(tests: str, context: str) -> tuple[list[str], list[str]]:
    """(functions, modules): the names the tests use that neither they nor the context define, split into standard
    library modules (imported in the tests' context) and the rest (the program's functions, called through the
    sandbox), each in order of first use. Tests that are not Python are a ValueError."""
    try:
        tree = ast.parse(context + "\n" + tests)
    except SyntaxError as err:
        raise ValueError(f"the tests are not Python: {err}") from None
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            defined.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    used = dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in defined)
    modules = [n for n in used if n in sys.stdlib_module_names]
    return [n for n in used if n not in modules], modules


CODE_INSTRUCTIONS = "Solve the task in Python 3. Answer with one ```python code block holding the complete code, and nothing after it."


class _CodeTask:
    """What the three code sets share (mixed into a HubTask): row checks, and a reference solution's steps."""

    instructions: str

    def reference(self, code: str, split: str, index: int, given: str = "") -> tuple[str, ...]:
        try:
            return reference_steps(code, given)
        except ValueError as err:
            raise ValueError(f"{self.where(split, index)}: {err}") from None

    def strings(self, row: dict[str, Any], name: str, split: str, index: int) -> list[str]:
        """A required list-of-strings field; anything else is an error naming its row."""
        value = row.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.where(split, index)}: field {name!r} must be a list of strings, got {str(value)[:100]}")
        return value


class HumanEval(_CodeTask, OneSplitTask):
    """HumanEval: complete a function from its signature and docstring; its `test` code's `check(entry_point)`
    must run to the end. 164 problems in one split, all of them validation by default (an evaluation set).
    Offline, `path` is the JSON-lines file (e.g. ../shared/data/humaneval/HumanEval.jsonl.gz).
    A completion is scored as the whole function in a ```python block, or as the body that continues the prompt.
    """

    name = "humaneval"

    def __init__(
        self,
        path: str | None = None,
        hub_name: str = "openai/openai_humaneval",
        hub_config: str | None = None,
        split: str = "test",
        train_size: int | None = None,
        val_size: int = 164,
        prompt_template: str = "Complete this function:\n```python\n{prompt}```",
        instructions: str = "Complete the Python function. Answer with one ```python code block holding the complete function, imports included.",
        use_chat_template: bool = True,
        max_new_tokens: int = 512,
        max_prompt_tokens: int | None = 2048,
        long_prompts: str = "error",
        bad_answers: str = "error",
    ):
        super().__init__(path, hub_name, hub_config, split, train_size, val_size, prompt_template, use_chat_template, max_new_tokens,
                         max_prompt_tokens, long_prompts, bad_answers)
        self.instructions = instructions

    def make_example(self, row: dict[str, Any], split: str, index: int) -> Example:
        task_id = self.field(row, "task_id", split, index)
        prompt = self.field(row, "prompt", split, index)
        solution = self.field(row, "canonical_solution", split, index)
        test = self.field(row, "test", split, index)
        entry = self.field(row, "entry_point", split, index)
        if not entry.isidentifier():
            raise ValueError(f"{self.where(split, index)}: entry_point {entry!r} is not a Python name")
        return Example(
            id=task_id,
            prompt=prompt,
            answer=prompt + solution,
            steps=self.reference(solution, split, index, given=prompt),
            step_separator="\n",
            step_style="lines",
            meta={"source": self.name, "split": split, "index": index,
                  "tests": CodeTests("assert", prefix=prompt, context=prompt, tests=f"{test}\n\ncheck({entry})\n", bind=((entry, entry),))},
        )

    def train(self) -> list[Example]:
        if self.train_size is None and self._cut() == 0:
            raise ValueError(f"humaneval: no training problems: val_size={self.val_size} takes every row. HumanEval is an evaluation "
                             "set; train on data=mbpp or data=code_stdio, or leave rows for training with a smaller data.val_size")
        return super().train()


class MBPP(_CodeTask, TwoSplitTask):
    """MBPP (Mostly Basic Python Problems): a task in words, a reference `code`, and `test_list` asserts.

    The prompt shows the task and the first `shown_tests` asserts (they give the function's name and call
    form); the reward runs all of them, so a program that only special-cases the shown ones fails.
    Works with the hub's "full" (`text`, `test_setup_code`) and "sanitized" (`prompt`, `test_imports`) configs.
    """

    name = "mbpp"

    def __init__(
        self,
        path: str | None = None,
        hub_name: str = "google-research-datasets/mbpp",
        hub_config: str | None = "full",
        train_split: str = "train",
        val_split: str = "test",
        train_size: int | None = None,
        val_size: int | None = 100,
        shown_tests: int = 1,
        prompt_template: str = "{prompt}",
        instructions: str = CODE_INSTRUCTIONS,
        use_chat_template: bool = True,
        max_new_tokens: int = 512,
        max_prompt_tokens: int | None = 2048,
        long_prompts: str = "error",
        bad_answers: str = "error",
    ):
        super().__init__(path, hub_name, hub_config, train_split, val_split, train_size, val_size, prompt_template, use_chat_template,
                         max_new_tokens, max_prompt_tokens, long_prompts, bad_answers)
        self.shown_tests = check("data.shown_tests", shown_tests, integer=True, low=0)
        self.instructions = instructions

    def make_example(self, row: dict[str, Any], split: str, index: int) -> Example:
        text = self.field(row, "text" if "text" in row else "prompt", split, index)
        code = self.field(row, "code", split, index)
        asserts = self.strings(row, "test_list", split, index)
        if not asserts:
            raise ValueError(f"{self.where(split, index)}: field 'test_list' is empty: nothing would check a program")
        setup = row.get("test_setup_code") or ""
        imports = row.get("test_imports") or []
        if not isinstance(setup, str) or not isinstance(imports, list):
            raise ValueError(f"{self.where(split, index)}: field 'test_setup_code' must be a string and 'test_imports' a list")
        tests = "\n".join(asserts) + "\n"
        context = "".join(f"{line}\n" for line in imports) + setup
        try:
            functions, modules = free_names(tests, context)
        except ValueError as err:
            raise ValueError(f"{self.where(split, index)}: {err}") from None
        shown = asserts[: self.shown_tests]
        lead = "Your code should pass this test:" if len(shown) == 1 else "Your code should pass these tests:"
        task_id = row.get("task_id", index)
        return Example(
            id=f"mbpp-{task_id}",
            prompt=text.strip() + (f"\n{lead}\n" + "\n".join(shown) if shown else ""),
            answer=code,
            steps=self.reference(code, split, index),
            step_separator="\n",
            step_style="lines",
            meta={"source": self.name, "split": split, "index": index, "task_id": task_id,
                  "tests": CodeTests("assert", context="".join(f"import {m}\n" for m in modules) + context, tests=tests,
                                     bind=tuple((f, f) for f in functions))},
        )


class CodeStdio(_CodeTask, OneSplitTask):
    """Problems whose programs read stdin and write stdout: open-r1's verifiable-coding-problems format.

    A row has the statement (`prompt_field`), `verification_info` (a dict or its JSON text) with `test_cases`
    of `input` / `output` (type `stdin_stdout` when given), and optionally a reference solution
    (`solution_field`, a ```python block or bare code; not Python: no steps). One split: validation is its
    last `val_size` rows. Scored by the share of cases whose output matches (`outputs_match`).
    """

    name = "code_stdio"

    def __init__(
        self,
        path: str | None = None,
        hub_name: str = "open-r1/verifiable-coding-problems-python",
        hub_config: str | None = None,
        split: str = "train",
        train_size: int | None = None,
        val_size: int = 100,
        prompt_field: str = "problem_statement",
        solution_field: str = "gold_standard_solution",
        prompt_template: str = "{prompt}",
        instructions: str = CODE_INSTRUCTIONS + " The program reads standard input and writes standard output.",
        use_chat_template: bool = True,
        max_new_tokens: int = 1024,
        max_prompt_tokens: int | None = 2048,
        long_prompts: str = "error",
        bad_answers: str = "error",
    ):
        super().__init__(path, hub_name, hub_config, split, train_size, val_size, prompt_template, use_chat_template, max_new_tokens,
                         max_prompt_tokens, long_prompts, bad_answers)
        self.prompt_field, self.solution_field, self.instructions = prompt_field, solution_field, instructions

    def make_example(self, row: dict[str, Any], split: str, index: int) -> Example:
        if self.prompt_field not in row:
            raise ValueError(f"{self.where(split, index)}: no field {self.prompt_field!r} (data.prompt_field); the row has {sorted(row)}")
        statement = self.field(row, self.prompt_field, split, index)
        info = row.get("verification_info")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError as err:
                raise ValueError(f"{self.where(split, index)}: field 'verification_info' is text but not JSON ({err})") from None
        if not isinstance(info, dict) or not isinstance(info.get("test_cases"), list) or not info["test_cases"]:
            raise ValueError(f"{self.where(split, index)}: field 'verification_info' must hold a non-empty list 'test_cases'")
        cases = []
        for number, case in enumerate(info["test_cases"]):
            kind = case.get("type", "stdin_stdout") if isinstance(case, dict) else None
            if kind != "stdin_stdout" or not isinstance(case.get("input"), str) or not isinstance(case.get("output"), str):
                raise ValueError(f"{self.where(split, index)}: test case {number} must be a stdin_stdout case with string "
                                 f"'input' and 'output', got {str(case)[:200]}")
            cases.append((case["input"], case["output"]))
        solution = row.get(self.solution_field) or ""
        if not isinstance(solution, str):
            raise ValueError(f"{self.where(split, index)}: field {self.solution_field!r} is {type(solution).__name__}, not a string")
        code = fenced_code(solution) if FENCE in solution else solution
        python = str(info.get("language", "python")).lower() in PYTHON_TAGS
        return Example(
            id=str(row.get("problem_id") or f"{self.name}-{split}-{index}"),
            prompt=statement,
            answer=code or "",
            steps=self.reference(code, split, index) if code and python else (),
            step_separator="\n",
            step_style="lines",
            meta={"source": self.name, "split": split, "index": index, "tests": CodeTests("stdio", cases=tuple(cases)),
                  "reference_is_python": python},  # another language's solution is not run against the tests at load
        )

