"""The context length of a GGUF file, read from its header alone.

transformers' AutoConfig (and the gguf package's GGUFReader) parse every metadata value of the file, the tokenizer's
whole vocabulary included: seconds on a small model. This walks the key/value pairs of the header (format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), skipping values it does not need, and stops at
`<general.architecture>.context_length`. Tensors are never read.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # value type -> struct code
_STRING, _ARRAY = 8, 9


def gguf_context_length(path: str | Path) -> int | None:
    """`<architecture>.context_length` of a little-endian GGUF (v2, v3) file; None when the header has none.
    ValueError when the file is not such a GGUF file."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF" or _read(f, "I") not in (2, 3):
            raise ValueError(f"{path} is not a little-endian GGUF file of version 2 or 3")
        _read(f, "Q")  # tensor count
        lengths: dict[str, int] = {}
        architecture = None
        for _ in range(_read(f, "Q")):
            key, value = _string(f), _value(f, _read(f, "I"))
            if key == "general.architecture":
                architecture = value
            elif key.endswith(".context_length"):
                lengths[key] = value
            if architecture is not None and f"{architecture}.context_length" in lengths:
                return int(lengths[f"{architecture}.context_length"])
    return None


def _read(f: BinaryIO, code: str):
    size = struct.calcsize("<" + code)
    data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{f.name}: the GGUF header ends early")
    return struct.unpack("<" + code, data)[0]


def _string(f: BinaryIO) -> str:
    return f.read(_read(f, "Q")).decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int):
    """A scalar or a string; an array is skipped (None)."""
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = _read(f, "I"), _read(f, "Q")
        if item in _SCALARS:
            f.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
        else:
            for _ in range(count):
                _value(f, item)
        return None
    if kind not in _SCALARS:
        raise ValueError(f"{f.name}: unknown GGUF value type {kind}")
    return _read(f, _SCALARS[kind])
