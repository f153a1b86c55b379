import json
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rlvr.data.steps import STYLES, split_steps, step_texts, token_step_spans
from rlvr.models.tiny import build_char_tokenizer

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def _rows(name: str) -> list[dict]:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"offline data set {path} not present (expected /work/shared/data next to the repo)")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_well_formed(text: str, spans: list[tuple[int, int]]) -> None:
    """Spans are sorted, disjoint, trimmed, non-empty, and only whitespace is left between them."""
    previous_end = 0
    for start, end in spans:
        assert previous_end <= start < end
        assert not text[start].isspace() and not text[end - 1].isspace()
        assert text[previous_end:start].strip() == ""
        previous_end = end
    assert text[previous_end:].strip() == ""


# ---------------------------------------------------------------- hand-made strings, every style


def test_lines():
    text = "  first line \n\n second\r\n\tthird\n   \n"
    assert step_texts(text, "lines") == ["first line", "second", "third"]
    assert split_steps(text, "lines") == [(2, 12), (16, 22), (25, 30)]


def test_paragraphs():
    text = "a b\nc d\n\n  \n\ne f\n \ng"
    assert step_texts(text, "paragraphs") == ["a b\nc d", "e f", "g"]


def test_separator():
    assert step_texts("12+34=46; 46+5=51;;#51 ", "separator", ";") == ["12+34=46", "46+5=51", "#51"]
    assert split_steps("ab||cd", "separator", "||") == [(0, 2), (4, 6)]


def test_step_markers():
    text = "Let us solve it.\nStep 1: add 2.\nSTEP 2 : double it.  step 3:done **Step 4:** end"
    assert step_texts(text, "step_markers") == [
        "Let us solve it.",
        "Step 1: add 2.",
        "STEP 2 : double it.",
        "step 3:done",
        "**Step 4:** end",
    ]
    # No preamble; "footstep 2:" and "step two:" are not markers.
    assert step_texts("## Step 1: a footstep 2: b step two: c", "step_markers") == ["## Step 1: a footstep 2: b step two: c"]


def test_latex_sentences_and_math():
    text = (
        "We have $x = 3.5$ and $y = 2.$  Then $x + y = 5.5$. "
        "See e.g. $z$ here. It costs \\$5.00 now. 1. First item. "
        "So\n\\[a = b. c\\]so $a$ is big.\n\nDone!"
    )
    assert step_texts(text, "latex") == [
        "We have $x = 3.5$ and $y = 2.$",
        "Then $x + y = 5.5$.",
        "See e.g. $z$ here.",
        "It costs \\$5.00 now.",
        "1. First item.",
        "So\n\\[a = b. c\\]so $a$ is big.",
        "Done!",
    ]


def test_latex_display_blocks_end_sentences():
    text = (
        "Thus,\n\\begin{align*}\nx &= 1. \\\\\ny &= 2.\n\\end{align*}Adding, we get $$x + y = 3.$$ "
        "Hence \\[z = 4\\]Therefore it ends.\n\nSo\n\n\\[w = 5\\]\n\n[asy]\ndraw((0,0)--(1,1)); label(\"$A$\");\n[/asy]"
    )
    assert step_texts(text, "latex") == [
        "Thus,\n\\begin{align*}\nx &= 1. \\\\\ny &= 2.\n\\end{align*}",
        "Adding, we get $$x + y = 3.$$",
        "Hence \\[z = 4\\]",
        "Therefore it ends.",
        "So\n\n\\[w = 5\\]",  # an unfinished sentence runs on into the display block after a blank line
        '[asy]\ndraw((0,0)--(1,1)); label("$A$");\n[/asy]',
    ]


def test_latex_nested_environments_and_stray_dollar():
    text = "Let \\begin{align*} M &= \\begin{pmatrix} 1. & 2 \\end{pmatrix}. X \\end{align*} ok. A stray $ sign. End."
    assert step_texts(text, "latex") == [
        "Let \\begin{align*} M &= \\begin{pmatrix} 1. & 2 \\end{pmatrix}. X \\end{align*} ok.",
        "A stray $ sign.",
        "End.",
    ]


def test_empty_and_whitespace_text():
    for style in STYLES:
        assert split_steps(" \n\t ", style, ";") == []


def test_bad_style_and_missing_separator():
    with pytest.raises(ValueError, match=r"unknown step style 'sentences'; choose one of lines, step_markers, paragraphs, latex, separator"):
        split_steps("a", "sentences")
    with pytest.raises(ValueError, match="step style 'separator' needs a non-empty separator"):
        split_steps("a;b", "separator")


# ---------------------------------------------------------------- real data


def test_gsm8k_answers_split_into_their_lines():
    rows = _rows("gsm8k/test.jsonl")
    assert step_texts(rows[0]["answer"], "lines") == [
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market.",
        "#### 18",
    ]
    for row in rows:
        answer = row["answer"]
        spans = split_steps(answer, "lines")
        _assert_well_formed(answer, spans)
        assert [answer[s:e] for s, e in spans] == [line.strip() for line in answer.split("\n") if line.strip()]
        assert answer[spans[-1][0] : spans[-1][1]].startswith("####")


def _unescaped_dollars(text: str) -> int:
    return len(re.findall(r"(?<!\\)\$", text))


def test_math500_solutions_split_into_sentences_never_inside_math():
    rows = _rows("math500/test.jsonl")
    counts = []
    for row in rows:
        solution = row["solution"]
        spans = split_steps(solution, "latex")
        _assert_well_formed(solution, spans)
        counts.append(len(spans))
        for start, end in spans:
            step = solution[start:end]
            # Every math and display block stays whole inside one step.
            assert _unescaped_dollars(step) % 2 == 0, step
            assert step.count("\\[") == step.count("\\]"), step
            assert step.count("\\begin{") == step.count("\\end{"), step
            assert step.count("[asy]") == step.count("[/asy]"), step
    assert sum(counts) > 3 * len(rows)  # sentences, not whole solutions
    # Row 25, checked by hand: 10 sentences, display blocks kept with the sentence that introduces them.
    steps = step_texts(rows[25]["solution"], "latex")
    assert len(steps) == 10
    assert steps[0] == "Setting $x = y = 0,$ we get\n\\[2f(0) = f(0) - 1,\\]so $f(0) = -1.$"
    assert steps[2].startswith("Thus,\n\\begin{align*}") and steps[2].endswith("\\end{align*}")
    assert steps[-1] == "This factors as $(n - 1)(n + 2) = 0,$ so the solutions are $n = \\boxed{1,-2}.$"
    # Row 0: a period inside inline math ends the sentence; the [asy] figure is one step.
    steps = step_texts(rows[0]["solution"], "latex")
    assert steps[0] == "We have that $r = \\sqrt{0^2 + 3^2} = 3.$"
    assert steps[2].startswith("[asy]") and steps[2].endswith("[/asy]")
    assert len(steps) == 4


# ---------------------------------------------------------------- token spans


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    """A small byte-level BPE trained here, so multi-byte characters get split across tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
    )
    corpus = ["12+34=46;46+5=51#51", "The caf\u00e9 costs 5 \u20ac, then more. Step 1: add."] * 20
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def test_token_spans_char_tokenizer_are_char_spans():
    tok = build_char_tokenizer()
    text = "12+34=46;46+5=51#51"
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    spans = split_steps(text, "separator", ";")
    assert spans == [(0, 8), (9, 19)]
    assert token_step_spans(ids, tok, spans) == [(0, 8), (9, 19)]


def test_token_spans_byte_level_bpe_cover_each_step_minimally(bpe):
    text = "The caf\u00e9 costs 5 \u20ac. Then \u65e5\u672c costs more.\nStep 1: add 12+34=46."
    ids = bpe.encode(text).ids + [bpe.token_to_id("<eos>")]
    assert bpe.decode(ids) == text
    char_spans = split_steps(text, "latex")
    assert len(char_spans) == 3
    token_spans = token_step_spans(ids, bpe, char_spans)
    for (cs, ce), (ts, te) in zip(char_spans, token_spans):
        step = text[cs:ce]
        assert step in bpe.decode(ids[ts:te])
        # Minimal: dropping the first or the last token loses part of the step.
        assert step not in bpe.decode(ids[ts + 1 : te])
        assert step not in bpe.decode(ids[ts : te - 1])
    assert token_spans[-1][1] == len(ids) - 1  # the EOS token belongs to no step


def test_token_spans_multibyte_character_split_across_tokens(bpe):
    text = "a \u65e5 b"  # an untrained CJK character: three byte tokens
    ids = bpe.encode(text).ids
    assert bpe.decode(ids) == text
    assert [bpe.id_to_token(i) for i in ids] == ["a", "Ġ", "æ", "Ĺ", "¥", "Ġ", "b"]
    # Exactly the character's three byte tokens form its step, though no one of them decodes alone.
    assert token_step_spans(ids, bpe, [(2, 3)]) == [(2, 5)]
    assert bpe.decode(ids[2:5]) == "\u65e5"
    assert token_step_spans(ids, bpe, [(0, 1), (4, 5), (0, 5)]) == [(0, 1), (6, 7), (0, 7)]


def test_token_spans_use_bisection_not_a_decode_per_token(bpe):
    class Counting:
        calls = 0

        def decode(self, ids, skip_special_tokens=True):
            Counting.calls += 1
            return bpe.decode(ids, skip_special_tokens=skip_special_tokens)

    text = " ".join(f"{i}+{i}={2 * i};" for i in range(100))
    ids = bpe.encode(text).ids
    spans = split_steps(text, "separator", ";")
    assert len(ids) > 300
    result = token_step_spans(ids, Counting(), spans[:3])
    assert result == token_step_spans(ids, bpe, spans[:3])
    assert Counting.calls < 60  # 3 spans x 2 boundaries x ~log2(n) prefix decodes, plus the full text


def test_token_spans_reject_spans_outside_the_text():
    tok = build_char_tokenizer()
    ids = tok.encode("abc", add_special_tokens=False)
    with pytest.raises(ValueError, match=r"char span \(1, 5\) is empty or outside the decoded text of length 3"):
        token_step_spans(ids, tok, [(1, 5)])
