"""Turning an example into prompt token ids for one model.

A model trained on a task's own bare format (the shipped tiny one: `model.bare_prompts=true`) sees the problem
text alone. Any other model is told the format: the data set's instructions as a system turn, its worked
examples as user / assistant turns, then the problem through `prompt_template`, all through the tokenizer's
chat template; a tokenizer without one gets the same parts as plain text.
"""

from __future__ import annotations

from typing import Any

from rlvr.batch import Example


def encode_chat(tokenizer: Any, text: str) -> list[int]:
    """`text` as a user turn through the tokenizer's chat template, ready for the assistant's reply; no extra
    special tokens (the template holds them). A tokenizer without a chat template: the plain text, with the
    tokenizer's usual special tokens (`tokenizer(text)["input_ids"]`, the same ids as `tokenizer.encode(text)`)."""
    return encode_turns(tokenizer, [{"role": "user", "content": text}])


def encode_turns(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Chat messages through the chat template, ready for the assistant's reply; without a template, their
    contents as plain text, one after the other (an assistant's content ends its turn with a blank line)."""
    if getattr(tokenizer, "chat_template", None):
        chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(chat, add_special_tokens=False)["input_ids"]
    parts = [m["content"] + ("\n\n" if m["role"] in ("system", "assistant") else "\n") for m in messages[:-1]]
    return tokenizer("".join(parts) + messages[-1]["content"])["input_ids"]


class PromptEncoder:
    """Example -> prompt token ids. The data set supplies `prompt_template` ({prompt}), `use_chat_template`,
    and optionally `instructions` (a system turn) and `worked_examples` ((problem, solution) pairs)."""

    def __init__(self, data: Any, tokenizer: Any, bare: bool = False):
        self.data, self.tokenizer, self.bare = data, tokenizer, bare
        self.preamble: list[dict[str, str]] = []
        if getattr(data, "instructions", None):
            self.preamble.append({"role": "system", "content": data.instructions})
        for problem, solution in getattr(data, "worked_examples", ()):
            self.preamble += [{"role": "user", "content": data.prompt_template.format(prompt=problem)},
                              {"role": "assistant", "content": solution}]

    def __call__(self, example: Example) -> list[int]:
        if self.bare:
            return self.tokenizer(example.prompt)["input_ids"]
        text = self.data.prompt_template.format(prompt=example.prompt)
        if not self.data.use_chat_template:
            return self.tokenizer(text)["input_ids"]
        return encode_turns(self.tokenizer, [*self.preamble, {"role": "user", "content": text}])

    def batch(self, examples: list[Example]) -> list[list[int]]:
        return [self(e) for e in examples]
