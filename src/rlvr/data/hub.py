"""Data sets loaded with `datasets`: the shared loading and row checks (HubTask; TwoSplitTask, OneSplitTask), GSM8K and MATH-500.

Each loads from the Hugging Face hub by name, or from a local directory of JSON-lines files named after
the splits (`train.jsonl`, `test.jsonl`), the same rows offline. Rows are checked as they are converted:
a missing field is an error naming where it came from, never a silently empty example.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

from rlvr.batch import Example
from rlvr.data.checks import bad_answers_policy, prompt_limits
from rlvr.data.steps import step_texts
from rlvr.options import check

BOXED_PROMPT = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<16-3-4=9>>


def read_jsonl(file: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, gzipped when it ends in .gz (blank lines skipped); bytes that are not
    UTF-8, a line that is not a JSON object, or a file with no rows is an error naming the file and the line."""
    rows = []
    with (gzip.open if Path(file).suffix == ".gz" else open)(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
                row = json.loads(line) if line.strip() else None
            except UnicodeDecodeError as err:
                raise ValueError(f"{file}, line {number}: not UTF-8 text ({err.reason} at byte {err.start} of the line)") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}, line {number}: not JSON ({err.msg} at column {err.colno})") from None
            if row is not None and not isinstance(row, dict):
                raise ValueError(f"{file}, line {number}: each line must be a JSON object, got {type(row).__name__}")
            if row is not None:
                rows.append(row)
    if not rows:
        raise ValueError(f"{file} holds no rows (an empty file?)")
    return rows


class HubTask:
    """Shared loading and row checks; subclasses turn one checked row into an Example."""

    name = "hub"

    def __init__(self, path: str | None, hub_name: str, hub_config: str | None, prompt_template: str, use_chat_template: bool,
                 max_new_tokens: int, max_prompt_tokens: int | None = 2048, long_prompts: str = "error", bad_answers: str = "error"):
        if not isinstance(prompt_template, str):
            raise ValueError(f"data.prompt_template must be a str.format template with a {{prompt}} field, got {prompt_template!r}")
        try:
            prompt_template.format(prompt="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"data.prompt_template must be a str.format template whose only field is {{prompt}} "
                f"(write literal braces as {{{{ }}}}), got {prompt_template!r}: {exc!r}"
            ) from exc
        if "{prompt}" not in prompt_template:
            raise ValueError(f"data.prompt_template must contain {{prompt}}, got {prompt_template!r}")
        self.path = Path(path) if path is not None else None
        self.hub_name, self.hub_config = hub_name, hub_config
        self.prompt_template, self.use_chat_template = prompt_template, use_chat_template
        self.max_new_tokens = check("data.max_new_tokens", max_new_tokens, integer=True, low=1)  # a budget that fits its solutions
        self.max_prompt_tokens, self.skip_long_prompts = prompt_limits(max_prompt_tokens, long_prompts)
        self.skip_bad_answers = bad_answers_policy(bad_answers)
        self._splits: dict[str, list[dict[str, Any]]] = {}

    def source(self, split: str) -> str:
        """Where `split` comes from, for error messages: the file, or the hub name."""
        if self.path is not None:
            return str(self.path / f"{split}.jsonl")
        return self.hub_name + (f" (config {self.hub_config})" if self.hub_config else "")

    def rows(self, split: str) -> list[dict[str, Any]]:
        """All raw rows of `split`, loaded once."""
        if split not in self._splits:
            if self.path is not None:
                file = self.path / f"{split}.jsonl"
                if not file.is_file():
                    raise FileNotFoundError(f"{self.name}: no file {file} for split {split!r}")
                self._splits[split] = read_jsonl(file)
            else:
                import datasets  # slow import, only when data is actually needed

                self._splits[split] = list(datasets.load_dataset(self.hub_name, self.hub_config, split=split))
        return self._splits[split]

    def where(self, split: str, index: int) -> str:
        return f"{self.name}: {self.source(split)}, split {split!r}, row {index}"

    def field(self, row: dict[str, Any], name: str, split: str, index: int) -> str:
        """A required string field; missing (absent, null) or non-string is an error naming its row."""
        value = row.get(name)
        if not isinstance(value, str):
            problem = "is missing" if value is None else f"is {type(value).__name__}, not a string"
            raise ValueError(f"{self.where(split, index)}: field {name!r} {problem}")
        return value

    def examples(self, split: str, start: int, stop: int) -> list[Example]:
        rows = self.rows(split)
        return [self.make_example(rows[i], split, i) for i in range(start, stop)]

    def first(self, split: str, size: int | None, size_name: str) -> list[Example]:
        """The first `size` rows of `split` (all when None): deterministic, no shuffling."""
        available = len(self.rows(split))
        if size is not None and size > available:
            raise ValueError(f"{self.name}: {size_name}={size} but split {split!r} of {self.source(split)} has {available} rows")
        return self.examples(split, 0, available if size is None else size)

    def make_example(self, row: dict[str, Any], split: str, index: int) -> Example:
        raise NotImplementedError


class TwoSplitTask(HubTask):
    """A data set with a training and a validation split; sizes take the first rows of a split (null: all of it)."""

    def __init__(self, path: str | None, hub_name: str, hub_config: str | None, train_split: str, val_split: str, train_size: int | None,
                 val_size: int | None, prompt_template: str, use_chat_template: bool, max_new_tokens: int, max_prompt_tokens: int | None,
                 long_prompts: str, bad_answers: str = "error"):
        super().__init__(path, hub_name, hub_config, prompt_template, use_chat_template, max_new_tokens, max_prompt_tokens, long_prompts, bad_answers)
        check("data.train_size", train_size, integer=True, low=0, optional=True)
        check("data.val_size", val_size, integer=True, low=0, optional=True)
        self.train_split, self.val_split = train_split, val_split
        self.train_size, self.val_size = train_size, val_size

    def train(self) -> list[Example]:
        return self.first(self.train_split, self.train_size, "train_size")

    def val(self) -> list[Example]:
        return self.first(self.val_split, self.val_size, "val_size")


class GSM8K(TwoSplitTask):
    """GSM8K grade-school word problems; the answer is the number after '####'.

    Reference steps are the solution's lines before '####' with calculator annotations removed.
    """

    name = "gsm8k"

    def __init__(
        self,
        path: str | None = None,
        hub_name: str = "openai/gsm8k",
        hub_config: str | None = "main",
        train_split: str = "train",
        val_split: str = "test",
        train_size: int | None = None,
        val_size: int | None = 200,
        prompt_template: str = BOXED_PROMPT,
        use_chat_template: bool = True,
        max_new_tokens: int = 512,
        max_prompt_tokens: int | None = 2048,
        long_prompts: str = "error",
        bad_answers: str = "error",
    ):
        super().__init__(path, hub_name, hub_config, train_split, val_split, train_size, val_size, prompt_template, use_chat_template,
                         max_new_tokens, max_prompt_tokens, long_prompts, bad_answers)

    def make_example(self, row: dict[str, Any], split: str, index: int) -> Example:
        question = self.field(row, "question", split, index)
        solution = self.field(row, "answer", split, index)
        if "####" not in solution:
            raise ValueError(f"{self.where(split, index)}: field 'answer' has no '####' final answer")
        body, final = solution.rsplit("####", 1)
        answer = final.strip().replace(",", "")
        if not answer:
            raise ValueError(f"{self.where(split, index)}: field 'answer' is empty after '####'")
        lines = (_CALCULATOR.sub("", line).strip() for line in body.split("\n"))
        return Example(
            id=f"gsm8k-{split}-{index}",
            prompt=question,
            answer=answer,
            steps=tuple(line for line in lines if line),
            step_separator="\n",
            step_style="lines",
            meta={"source": self.name, "split": split, "index": index},
        )


class OneSplitTask(HubTask):
    """A data set with a single split: validation is its last `val_size` rows, training the rows before them
    (the first `train_size` of those; null: all), so the two never overlap. `path` is a directory holding
    `<split>.jsonl`, or one JSON-lines file (`.jsonl`, `.jsonl.gz`) holding the split."""

    def __init__(self, path: str | None, hub_name: str, hub_config: str | None, split: str, train_size: int | None, val_size: int,
                 prompt_template: str, use_chat_template: bool, max_new_tokens: int, max_prompt_tokens: int | None, long_prompts: str,
                 bad_answers: str = "error"):
        super().__init__(path, hub_name, hub_config, prompt_template, use_chat_template, max_new_tokens, max_prompt_tokens, long_prompts, bad_answers)
        check("data.train_size", train_size, integer=True, low=0, optional=True)
        check("data.val_size", val_size, integer=True, low=0)
        self.split, self.train_size, self.val_size = split, train_size, val_size

    def source(self, split: str) -> str:
        if self.path is not None and self.path.is_file():
            return str(self.path)
        return super().source(split)

    def rows(self, split: str) -> list[dict[str, Any]]:
        if self.path is not None and self.path.is_file() and split not in self._splits:
            self._splits[split] = read_jsonl(self.path)
        return super().rows(split)

    def _cut(self) -> int:
        """Index of the first validation row."""
        total = len(self.rows(self.split))
        if self.val_size > total:
            raise ValueError(f"{self.name}: val_size={self.val_size} but split {self.split!r} of {self.source(self.split)} has {total} rows")
        cut = total - self.val_size
        if self.train_size is not None and self.train_size > cut:
            raise ValueError(
                f"{self.name}: train_size={self.train_size} but only {cut} rows of split {self.split!r} "
                f"are left for training after the last val_size={self.val_size}"
            )
        return cut

    def train(self) -> list[Example]:
        cut = self._cut()
        return self.examples(self.split, 0, cut if self.train_size is None else self.train_size)

    def val(self) -> list[Example]:
        cut = self._cut()
        return self.examples(self.split, cut, cut + self.val_size)


class MATH500(OneSplitTask):
    """MATH-500, the 500-problem test subset of MATH; the answer is the dataset's `answer` field.

    It has a single split, so train and validation are a deterministic disjoint cut of it (see OneSplitTask).
    Reference steps are the LaTeX solution split with `split_steps(solution, "latex")`.
    """

    name = "math500"

    def __init__(
        self,
        path: str | None = None,
        hub_name: str = "HuggingFaceH4/MATH-500",
        hub_config: str | None = None,
        split: str = "test",
        train_size: int | None = None,
        val_size: int = 100,
        prompt_template: str = BOXED_PROMPT,
        use_chat_template: bool = True,
        max_new_tokens: int = 1024,
        max_prompt_tokens: int | None = 2048,
        long_prompts: str = "error",
        bad_answers: str = "error",
    ):
        super().__init__(path, hub_name, hub_config, split, train_size, val_size, prompt_template, use_chat_template, max_new_tokens,
                         max_prompt_tokens, long_prompts, bad_answers)

    def make_example(self, row: dict[str, Any], split: str, index: int) -> Example:
        problem = self.field(row, "problem", split, index)
        solution = self.field(row, "solution", split, index)
        answer = self.field(row, "answer", split, index)
        unique_id = self.field(row, "unique_id", split, index)
        return Example(
            id=unique_id,
            prompt=problem,
            answer=answer.strip(),
            steps=tuple(step_texts(solution, "latex")),
            step_separator="\n",
            step_style="latex",
            meta={
                "source": self.name,
                "split": split,
                "index": index,
                "subject": row.get("subject"),
                "level": row.get("level"),
            },
        )
