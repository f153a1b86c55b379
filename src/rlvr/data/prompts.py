"""Turning an example into prompt token ids: the data set's template, then the chat template if any."""

from __future__ import annotations

from typing import Any

from rlvr.batch import Example


def encode_prompt(example: Example, template: str, use_chat_template: bool, tokenizer: Any) -> list[int]:
    text = template.format(prompt=example.prompt)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]
