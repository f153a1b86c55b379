"""Tiny transformers models and character tokenizers built locally: no hub, real architectures."""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
DEFAULT_CHARS = string.digits + "+-*/=;#()., " + string.ascii_letters + "\n:?!$\\{}^_"


def build_char_tokenizer(chars: Iterable[str] = DEFAULT_CHARS, extra_tokens: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """One token per character (plus special tokens); saves with `save_pretrained`, reloads with AutoTokenizer."""
    specials = [PAD, EOS, UNK, *extra_tokens]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in dict.fromkeys(chars):
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # "." would skip newlines, so "\n\n" became one unknown token
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK, additional_special_tokens=list(extra_tokens)
    )
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_qwen2_config(vocab_size: int, hidden: int = 128, layers: int = 4, heads: int = 4, max_positions: int = 256, **kw) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **kw,
    )
