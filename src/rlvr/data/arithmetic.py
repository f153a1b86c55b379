"""The embedded default task: multi-step addition written as running partial sums.

`12+34+5=` is answered `12+34=46;46+5=51#51`: one step per addition, `;` between steps, `#` before
the final answer. Every step is checkable, so the rule judge knows exactly where a response first
goes wrong, and the reference steps are what guided roll-outs start from.
"""

from __future__ import annotations

import random
import re

from rlvr.batch import Example
from rlvr.data.checks import bad_answers_policy, prompt_limits
from rlvr.options import check

STEP_SEPARATOR = ";"
ANSWER_MARK = "#"
_PROMPT = re.compile(r"^\d+(\+\d+)+=$")
# The answer: an integer, plain or in whole thousands groups (1,000), and after it only what cannot make it another
# number (see final_answer): appended junk never keeps a wrong answer's reward.
_WORD = r"[^\W\d_]{2}"  # a word: two letters or more (so "x 2" is not one)
_SPECIAL_TOKEN = r"<[^<>\s\d][^<>]*>"  # <eos>, </s>, <|im_end|>
_ANSWER = re.compile(
    rf"\s*(-?(?:[0-9]{{1,3}}(?:,[0-9]{{3}})+|[0-9]+))"
    rf"(?:\.|,(?=\s+{_WORD}))?(?:{_SPECIAL_TOKEN})*(?:\s+(?={_WORD}|{_SPECIAL_TOKEN}).*)?\s*",
    re.DOTALL,
)
_STEP = r"\s*\d+\s*\+\s*\d+\s*=\s*\d+\s*"
_FORMAT = re.compile(rf"(?:{_STEP};)*{_STEP};?\s*#\s*\d+\s*\.?\s*")
_ANSWER_IS = re.compile(r"answer is\s*:?", re.IGNORECASE)


def make_example(terms: list[int], example_id: str) -> Example:
    steps, total = [], terms[0]
    for term in terms[1:]:
        steps.append(f"{total}+{term}={total + term}")
        total += term
    return Example(
        id=example_id,
        prompt="+".join(map(str, terms)) + "=",
        answer=str(total),
        steps=tuple(steps),
        step_separator=STEP_SEPARATOR,
        step_style="separator",
        meta={"terms": list(terms)},
    )


def parse_terms(prompt: str) -> list[int]:
    if not _PROMPT.match(prompt):
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    return [int(t) for t in prompt[:-1].split("+")]


def target_text(example: Example) -> str:
    """The full reference completion (what the warm-start is trained to write)."""
    return example.solution + ANSWER_MARK + example.answer


def final_answer(completion: str) -> str | None:
    """The integer after the last '#' or, without a '#', after the last "answer is"; None when there is none.

    Grammar of the text after the mark: optional whitespace, then the number (`-`?, digits, or digits in thousands
    groups of three: `1,000`), then optionally a full stop, or a comma when whitespace and a word follow (`#51, since
    ...`), then any special tokens (`<eos>`, `<|im_end|>`), then the end, or whitespace and a word (two letters or
    more) or a special token, after which anything but a step separator may follow. A separator (';') with no step
    after it is nothing, as in split_steps; any other ';' after the answer is another step, so the answer is not the
    last step and is refused (the rule judge agrees). Everything else after the number is refused, so no other number
    is read as this one: `#51.9`, `#51e2`, `#51²`, `#51½`, `#51x2`, `#51 x 2`, `#51..9`, `#51 .9`, `#51:52`,
    `#51, 52`, `#51 52`, `#5,1`, `#10,00`, `#51+1`, `#51;52`."""
    if ANSWER_MARK in completion:
        rest = completion.rsplit(ANSWER_MARK, 1)[1]
    else:
        said = list(_ANSWER_IS.finditer(completion))
        if not said:
            return None
        rest = completion[said[-1].end():]
    rest = rest.rstrip().rstrip(STEP_SEPARATOR + " \t\n\r\f\v")  # trailing empty steps
    found = _ANSWER.fullmatch(rest)
    if found is None or STEP_SEPARATOR in rest:
        return None
    return found[1].replace(",", "")


def in_format(completion: str) -> bool:
    """Whether a completion is in the checkable format: `a+b=c` steps separated by ';', then '#' and a number
    (whitespace anywhere, a full stop after the answer). Right or wrong, the rule judge can check every step."""
    return _FORMAT.fullmatch(completion) is not None


def sample_terms(rng: random.Random, num_terms: int, max_value: int) -> list[int]:
    return [rng.randint(1, max_value) for _ in range(num_terms)]


class ArithmeticTask:
    """Synthetic problems with `min_terms..max_terms` terms, each in 1..max_value.

    Train and validation sets are drawn from different seeds, validation prompts removed from train; validation is balanced over term counts so
    per-difficulty accuracy is measured on equal footing.
    """

    name = "arithmetic"
    prompt_template = "{prompt}"
    use_chat_template = True  # for models that are told the format (see rlvr.data.prompts)
    instructions = (
        "Add the numbers one at a time. Write each partial sum as a+b=c, separate the steps with ';', "
        "then write '#' and the final sum. Write nothing else."
    )
    # Worked examples for models that are told the format, one per step count (1 to 4 steps). Five, not three:
    # SmolLM2-135M wrote the checkable format in 28 % of greedy completions with these, 9 % with the first three.
    worked_examples = tuple((e.prompt, target_text(e)) for e in (
        make_example([250, 3], "shot-0"), make_example([12, 345, 5], "shot-1"), make_example([708, 80, 914, 2], "shot-2"),
        make_example([431, 27, 608, 95, 312], "shot-3"), make_example([96, 704], "shot-4"),
    ))

    def __init__(self, min_terms: int = 2, max_terms: int = 5, max_value: int = 999, train_size: int = 20000, val_size: int = 200, seed: int = 0,
                 max_new_tokens: int = 96, max_prompt_tokens: int | None = 2048, long_prompts: str = "error", bad_answers: str = "error",
                 task_shots: int = 0):
        check("data.min_terms", min_terms, integer=True, low=2)
        if check("data.max_terms", max_terms, integer=True) < min_terms:
            raise ValueError(f"data.max_terms ({max_terms}) is below data.min_terms ({min_terms})")
        check("data.max_value", max_value, integer=True, low=1)
        check("data.train_size", train_size, integer=True, low=0)
        check("data.val_size", val_size, integer=True, low=0)
        check("data.seed", seed, integer=True, low=0)
        self.min_terms, self.max_terms, self.max_value = min_terms, max_terms, max_value
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.max_new_tokens = check("data.max_new_tokens", max_new_tokens, integer=True, low=1)  # fits a 5-term answer
        self.max_prompt_tokens, self.skip_long_prompts = prompt_limits(max_prompt_tokens, long_prompts)
        self.skip_bad_answers = bad_answers_policy(bad_answers)
        # A model that is told the format copies its worked examples' shape: small terms need examples of their own size.
        if check("data.task_shots", task_shots, integer=True, low=0):
            self.worked_examples = tuple((e.prompt, target_text(e)) for e in self.train()[:task_shots])

    def _draw(self, count: int, seed: int, split: str) -> list[Example]:
        rng = random.Random(seed)
        spans = list(range(self.min_terms, self.max_terms + 1))
        return [
            make_example(sample_terms(rng, spans[i % len(spans)], self.max_value), f"{split}-{i}")
            for i in range(count)
        ]

    def train(self) -> list[Example]:
        held_out = {e.prompt for e in self.val()}
        return [e for e in self._draw(self.train_size, self.seed, "train") if e.prompt not in held_out]

    def val(self) -> list[Example]:
        return self._draw(self.val_size, self.seed + 1_000_003, "val")
