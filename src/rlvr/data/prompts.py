"""Turning an example into prompt token ids: the data set's template, then the chat template if any."""

from __future__ import annotations

from typing import Any

from rlvr.batch import Example


def encode_chat(tokenizer: Any, text: str) -> list[int]:
    """`text` as a user turn through the tokenizer's chat template, ready for the assistant's reply; no extra
    special tokens (the template holds them). A tokenizer without a chat template: the plain text, with the
    tokenizer's usual special tokens (`tokenizer(text)["input_ids"]`, the same ids as `tokenizer.encode(text)`)."""
    if getattr(tokenizer, "chat_template", None):
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return tokenizer(chat, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def encode_prompt(example: Example, template: str, use_chat_template: bool, tokenizer: Any) -> list[int]:
    text = template.format(prompt=example.prompt)
    if use_chat_template:
        return encode_chat(tokenizer, text)
    return tokenizer(text)["input_ids"]
