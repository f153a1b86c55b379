"""Splitting a solution or a response into reasoning steps, and mapping steps onto tokens.

One function, `split_steps`, with a style per data set:

- "lines": one step per non-empty line (GSM8K).
- "step_markers": a step starts at each "Step 1:", "Step 2:" ... marker (case-insensitive; a markdown
  "**Step 1:**" or "## Step 1:" prefix belongs to the marker); text before the first marker is a step.
- "paragraphs": blank-line separated blocks.
- "latex": sentences of a LaTeX solution (MATH). Math (`$…$`, `\\(…\\)`) and display blocks (`$$…$$`,
  `\\[…\\]`, `\\begin{env}…\\end{env}`, `[asy]…[/asy]`) are never split; a display block belongs to the
  sentence around it and ends it when its content ends a sentence or a capitalised sentence follows.
- "separator": split on a fixed string (the arithmetic task uses ";").

Steps are character spans (start, end) into the text, whitespace-trimmed, empty ones dropped, so a
caller can map them onto tokens with `token_step_spans`.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

STYLES = ("lines", "step_markers", "paragraphs", "latex", "separator")

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_STEP_MARKER = re.compile(r"(?:#{1,6}[ \t]*)?(?:\*\*|__)?\bstep[ \t]*\d+[ \t]*:", re.IGNORECASE)
_BEGIN = re.compile(r"\\begin\{([^{}]*)\}")
# A lone enumeration label ("1.", "(a)") is not a sentence of its own.
_LABEL = re.compile(r"\(?[0-9A-Za-z]{1,3}[.)]")
_TERMINATORS = ".?!"
_ABBREVIATION = re.compile(r"(?:^|[^A-Za-z])(?:e\.g|i\.e|cf|vs|resp|approx)\.$", re.IGNORECASE)
_CLOSERS = ")]\"'"


def split_steps(text: str, style: str, separator: str | None = None) -> list[tuple[int, int]]:
    """Character spans (start, end) of the non-empty, whitespace-trimmed steps of `text`."""
    if style == "lines":
        return _between(text, [(m.start(), m.end()) for m in re.finditer("\n", text)])
    if style == "paragraphs":
        return _between(text, [(m.start(), m.end()) for m in _BLANK_LINE.finditer(text)])
    if style == "separator":
        if not separator:
            raise ValueError("step style 'separator' needs a non-empty separator (e.g. step_separator=';')")
        return _between(text, [(m.start(), m.end()) for m in re.finditer(re.escape(separator), text)])
    if style == "step_markers":
        # Each marker starts a step: cut just before it (a zero-width cut).
        return _between(text, [(m.start(), m.start()) for m in _STEP_MARKER.finditer(text)])
    if style == "latex":
        return _between(text, [(c, c) for c in _latex_cuts(text)])
    raise ValueError(f"unknown step style {style!r}; choose one of {', '.join(STYLES)}")


def step_texts(text: str, style: str, separator: str | None = None) -> list[str]:
    return [text[s:e] for s, e in split_steps(text, style, separator)]


def _between(text: str, cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The trimmed, non-empty pieces of `text` outside the (sorted, disjoint) cut intervals."""
    spans, start = [], 0
    for cut_start, cut_end in [*cuts, (len(text), len(text))]:
        a, b = start, cut_start
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            spans.append((a, b))
        start = cut_end
    return spans


# ---------------------------------------------------------------- latex


def _latex_cuts(text: str) -> list[int]:
    """Positions where a sentence of a LaTeX solution ends (outside any math or display block)."""
    cuts: list[int] = []
    last = 0

    def cut(pos: int) -> None:
        nonlocal last
        if pos > last and not _LABEL.fullmatch(text[last:pos].strip()):
            cuts.append(pos)
            last = pos

    n, i, region_end = len(text), 0, 0
    while i < n:
        region = _math_region(text, i)
        if region is not None:
            end, content_end, display = region
            region_end = end
            content = text[i:content_end].rstrip()
            ends_sentence = content.endswith(tuple(_TERMINATORS)) and _sentence_follows(text, end, need_space=not display)
            if ends_sentence or (display and _capital_follows(text, end)):
                cut(end)
            i = end
            continue
        char = text[i]
        if char == "\\":  # an escaped char (\$, \.) or a command name: never a delimiter or a full stop
            i += 2
            continue
        if char == "\n":
            blank = _BLANK_LINE.match(text, i)
            if blank:
                # "So\n\n\\[...\\]": an unfinished sentence goes on into the display block after the break.
                after = n - len(text[blank.end() :].lstrip())
                pending = text[max(last, region_end) : i].rstrip()
                unfinished = bool(pending) and pending[-1] not in _TERMINATORS
                display_next = after < n and (_math_region(text, after) or (0, 0, False))[2]
                if not (unfinished and display_next):
                    cut(i)
                i = blank.end() - 1
        elif char in _TERMINATORS:
            j = i + 1
            while j < n and text[j] in _CLOSERS:
                j += 1
            if _sentence_follows(text, j, need_space=True) and not _ABBREVIATION.search(text, max(0, i - 8), i + 1):
                cut(j)
        i += 1
    return cuts


def _sentence_follows(text: str, pos: int, need_space: bool) -> bool:
    """After a full stop at `pos`: the text ends, or (whitespace and) something not lower-case follows."""
    rest = text[pos:]
    stripped = rest.lstrip()
    if not stripped:
        return True
    if need_space and len(stripped) == len(rest):
        return False  # "3.5", "e.g.x": no space, no sentence end
    return not stripped[0].islower()


def _capital_follows(text: str, pos: int) -> bool:
    stripped = text[pos:].lstrip()
    return bool(stripped) and stripped[0].isupper()


def _math_region(text: str, i: int) -> tuple[int, int, bool] | None:
    """(end, content_end, is_display) of the math or display block opening at `i`, or None.

    An opener without its closer is read as plain text, so one stray `$` in a model's response
    cannot swallow the rest of it.
    """
    if text.startswith("$$", i):
        close = _find_unescaped(text, "$$", i + 2)
        return None if close < 0 else (close + 2, close, True)
    if text[i] == "$":
        close = _find_unescaped(text, "$", i + 1)
        # Inline math never spans a paragraph break; such a `$` is a stray one.
        if close < 0 or _BLANK_LINE.search(text, i, close):
            return None
        return close + 1, close, False
    if text.startswith("\\[", i):
        close = _find_unescaped(text, "\\]", i + 2)
        return None if close < 0 else (close + 2, close, True)
    if text.startswith("\\(", i):
        close = _find_unescaped(text, "\\)", i + 2)
        return None if close < 0 else (close + 2, close, False)
    if text.startswith("[asy]", i):
        close = text.find("[/asy]", i + 5)
        return None if close < 0 else (close + 6, close, True)
    if text.startswith("\\begin{", i):
        begin = _BEGIN.match(text, i)
        if begin is None:
            return None
        close = _matching_end(text, begin.group(1), begin.end())
        if close < 0:
            return None
        return close + len(f"\\end{{{begin.group(1)}}}"), close, True
    return None


def _find_unescaped(text: str, closer: str, start: int) -> int:
    """Index of the first `closer` at or after `start` that is not backslash-escaped, or -1."""
    j, n = start, len(text)
    while j < n:
        if text.startswith(closer, j):
            return j
        j += 2 if text[j] == "\\" else 1
    return -1


def _matching_end(text: str, name: str, start: int) -> int:
    """Index of the `\\end{name}` closing an environment opened before `start` (nesting counted), or -1."""
    opener, closer = f"\\begin{{{name}}}", f"\\end{{{name}}}"
    depth, j = 1, start
    while True:
        next_close = text.find(closer, j)
        if next_close < 0:
            return -1
        next_open = text.find(opener, j, next_close)
        if next_open >= 0:
            depth, j = depth + 1, next_open + len(opener)
            continue
        depth -= 1
        if depth == 0:
            return next_close
        j = next_close + len(closer)


# ---------------------------------------------------------------- tokens


class _PrefixLengths:
    """Lazy, memoised character lengths of decode(ids[:k]), k = 0..len(ids), for bisection.

    `ceil[k]` counts a character whose bytes are cut by the prefix (byte-level BPE decodes it as
    U+FFFD); `floor[k]` does not. Token t then covers the characters [floor[t], ceil[t + 1]).
    """

    def __init__(self, token_ids: list[int], tokenizer: Any, skip_special_tokens: bool):
        self.ids, self.tokenizer, self.skip = token_ids, tokenizer, skip_special_tokens
        self.text = self._decode(len(token_ids))
        self._memo: dict[int, tuple[int, int]] = {}

    def _decode(self, k: int) -> str:
        return self.tokenizer.decode(self.ids[:k], skip_special_tokens=self.skip)

    def get(self, k: int) -> tuple[int, int]:
        if k not in self._memo:
            prefix = self._decode(k) if k < len(self.ids) else self.text
            size = len(prefix)
            # A trailing U+FFFD the full text does not have is a character cut mid-bytes.
            partial = size > 0 and prefix[-1] == "\ufffd" and self.text[size - 1 : size] != "\ufffd"
            self._memo[k] = (size - 1 if partial else size, size)
        return self._memo[k]


class _Column:
    """A read-only sequence view of one column of _PrefixLengths, so `bisect` can search it."""

    def __init__(self, lengths: _PrefixLengths, column: int):
        self.lengths, self.column = lengths, column

    def __len__(self) -> int:
        return len(self.lengths.ids) + 1

    def __getitem__(self, k: int) -> int:
        return self.lengths.get(k)[self.column]


def token_step_spans(
    token_ids: list[int], tokenizer: Any, char_spans: list[tuple[int, int]], skip_special_tokens: bool = True
) -> list[tuple[int, int]]:
    """Token index spans [start, end) of each character span of `decode(token_ids)`.

    A token that overlaps a step (even by one byte of a multi-byte character) belongs to it, so
    neighbouring spans can share a token. Exact for character and byte-level BPE tokenizers. Costs
    O(log n) prefix decodes per span boundary (bisection on the cumulative decoded length).
    """
    ids = [int(t) for t in token_ids]
    lengths = _PrefixLengths(ids, tokenizer, skip_special_tokens)
    floor, ceil = _Column(lengths, 0), _Column(lengths, 1)
    out = []
    for start, end in char_spans:
        if not 0 <= start < end <= len(lengths.text):
            raise ValueError(f"char span ({start}, {end}) is empty or outside the decoded text of length {len(lengths.text)}")
        # First token t whose end ceil[t + 1] passes `start`; one past the last token t with floor[t] < end.
        first = bisect.bisect_right(ceil, start, 1) - 1
        stop = bisect.bisect_left(floor, end, 0)
        out.append((first, max(stop, first + 1)))
    return out
