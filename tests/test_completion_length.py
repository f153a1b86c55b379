"""train/completion_length counts the tokens the policy generated: no guidance prefix, no padding."""

from rlvr.metrics import completion_lengths
from tests.helpers import TOKENIZER, make_batch


def test_lengths_count_own_tokens_and_eos_but_no_padding_or_guidance():
    batch = make_batch([["1#1", "34=46#46"]], prefixes=[["", "12+"]])
    # "1#1" + EOS = 4; the guided sample's own part "34=46#46" + EOS = 9 (its 3 prefix tokens are copied)
    assert completion_lengths(batch).tolist() == [4.0, 9.0]


def test_pad_tokens_an_engine_returns_after_eos_are_not_counted():
    pad, eos = TOKENIZER.pad_token_id, TOKENIZER.eos_token_id
    assert pad != eos
    batch = make_batch([["1#1", "2#2"]])
    # an engine that hands back its padded batch row: EOS, then pads, then (pad = EOS tokenizers) more EOS
    batch.completion_ids[0, 4:] = pad
    batch.token_mask[0, :] = 1
    batch.completion_ids[1, 4:] = eos
    batch.token_mask[1, :] = 1
    assert completion_lengths(batch).tolist() == [4.0, 4.0]
