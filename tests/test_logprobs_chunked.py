"""Chunked log-probs and entropy (hidden states + lm_head, a chunk of tokens at a time) equal the plain path through
full logits, and never build [N, C, V] logits, in the forward or the backward."""

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig

from tests.helpers import make_batch
from tests.test_scale import COMPLETIONS, PREFIXES, TERMS
from rlvr.algorithm import AlgorithmConfig
from rlvr.logprobs import batch_logprobs, completion_hidden, completion_logits, completion_logprobs, head_logprobs, output_head
from rlvr.models.hf import disable_dropout
from rlvr.models.tiny import tiny_qwen2_config

VOCAB = 97  # above the test tokenizer's ids, so most of each softmax is over tokens never sampled
CHUNK = 7  # divides no row length: chunks straddle rows, the last one is short


def tiny(kind: str, vocab: int = VOCAB, seed: int = 0, hidden: int = 32):
    torch.manual_seed(seed)
    if kind in ("qwen2", "qwen2-untied"):
        config = tiny_qwen2_config(vocab, hidden=hidden, layers=2, heads=2)
        config.tie_word_embeddings = kind == "qwen2"
    elif kind == "llama":  # SmolLM's architecture: grouped key/value heads, untied head
        config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    elif kind == "gpt2":  # absolute positions, a model-level gradient-checkpointing flag
        config = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=2, n_head=2, n_positions=128)
    model = AutoModelForCausalLM.from_config(config)
    disable_dropout(model)  # GPT-2 has dropout on by default: two passes would differ by their masks
    return model.train()


def batch():
    """Left padding (prompts of three lengths), guided prefixes and completions of different lengths."""
    return make_batch(COMPLETIONS, terms=TERMS, prefixes=PREFIXES)


def scores(model, rows, shared, chunk, temperature=1.0):
    """(log-probs, entropy, parameter gradients) of a loss that weighs every token differently."""
    model.zero_grad(set_to_none=True)
    logprobs, entropy = completion_logprobs(model, rows, temperature, shared, chunk)
    weights = torch.linspace(-1, 1, logprobs.numel()).view_as(logprobs)
    (logprobs * weights * rows.token_mask).sum().backward()
    return logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(plain, chunked, mask, lp_atol=1e-5, grad_rtol=1e-5):
    assert not chunked[1].requires_grad  # entropy is a statistic
    assert (plain[0] - chunked[0])[mask].abs().max() < lp_atol
    assert (plain[1] - chunked[1])[mask].abs().max() < lp_atol
    assert plain[2].keys() == chunked[2].keys() and plain[2]
    for name, grad in plain[2].items():
        assert (grad - chunked[2][name]).norm() <= grad_rtol * grad.norm(), name


@pytest.mark.parametrize("kind, shared, temperature, checkpointing", [
    ("qwen2", False, 1.0, False),
    ("qwen2", True, 0.7, False),
    ("qwen2-untied", True, 1.0, True),
    ("qwen2-untied", False, 1.3, True),
    ("llama", True, 0.7, False),
    ("llama", False, 1.0, True),
    ("gpt2", True, 1.0, False),
    ("gpt2", False, 0.7, True),
])
def test_chunked_equals_plain_logprobs_entropy_and_gradients(kind, shared, temperature, checkpointing):
    model, rows = tiny(kind), batch()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    plain = scores(model, rows, shared, None, temperature)
    chunked = scores(model, rows, shared, CHUNK, temperature)
    mask = rows.token_mask.bool()
    assert_same(plain, chunked, mask)
    assert plain[1][mask].min() > 0 and plain[0][mask].max() < 0  # real numbers, not zeros on both sides
    # The comparison can fail: the other temperature moves the log-probs by far more than the tolerance.
    other = completion_logprobs(model, rows, temperature + 0.5, shared, CHUNK)[0].detach()
    assert (other - plain[0])[mask].abs().max() > 1e-2


@pytest.mark.parametrize("tied", [True, False])
def test_lora_with_the_lm_head_among_its_targets(tied):
    model = tiny("qwen2" if tied else "qwen2-untied")
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"],
                      init_lora_weights=False)  # random B: the head's adapter changes the logits
    model, rows = get_peft_model(model, lora), batch()
    assert hasattr(output_head(model), "lora_A")  # the LoRA-wrapped head is the one that scores
    plain, chunked = scores(model, rows, True, None), scores(model, rows, True, CHUNK)
    assert_same(plain, chunked, rows.token_mask.bool())
    assert any("lm_head.lora_B" in name for name in chunked[2])  # the head's adapter is trained through the chunks


def test_gpt2_with_gradient_checkpointing_shares_the_prefix():
    """Issue 23: GPT-2's model drops the cache when checkpointing, so the completion pass lost its prefix (a size
    mismatch). Both paths now equal the plain forward, log-probs and gradients."""
    model, rows = tiny("gpt2"), batch()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for chunk in (None, CHUNK):
        assert_same(scores(model, rows, False, chunk), scores(model, rows, True, chunk), rows.token_mask.bool())


def test_bf16_is_close_to_the_plain_path():
    """bf16 weights: both paths run the same bf16 matmuls and upcast to float32 for the softmax; the chunk's
    matmul may round differently, so the tolerance is bf16's (about 3 significant digits)."""
    model, rows = tiny("qwen2").to(torch.bfloat16), batch()
    plain, chunked = scores(model, rows, True, None), scores(model, rows, True, CHUNK)
    assert plain[0].dtype == chunked[0].dtype == torch.float32
    assert_same(plain, chunked, rows.token_mask.bool(), lp_atol=2e-2, grad_rtol=2e-2)


def test_head_with_a_bias_and_without_autograd():
    torch.manual_seed(0)
    head, hidden, tokens = torch.nn.Linear(8, 50), torch.randn(3, 5, 8), torch.randint(0, 50, (3, 5))
    logits = head(hidden) / 0.5
    want = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    got, entropy = head_logprobs(hidden, head, tokens, temperature=0.5, chunk_tokens=4)
    assert torch.allclose(got, want, atol=1e-6)
    probs = logits.softmax(-1)
    assert torch.allclose(entropy, -(probs * probs.log()).sum(-1), atol=1e-5)
    with torch.no_grad():
        lp, none = head_logprobs(hidden, head, tokens, temperature=0.5, chunk_tokens=4, entropy=False)
    assert none is None and torch.allclose(lp, want, atol=1e-6)


def test_batch_logprobs_old_and_reference_passes_use_the_chunks():
    model, rows = tiny("qwen2"), batch()
    passes = rows.micro_batches(max_samples=5, max_tokens=None, shared_prefix=True)
    plain = batch_logprobs(model, rows, 0.7, passes, True, None)
    chunked = batch_logprobs(model, rows, 0.7, passes, True, CHUNK)
    assert (plain - chunked).abs().max() < 1e-5 and plain.abs().max() > 0


class LargestTensor(TorchDispatchMode):
    """The element count of the largest tensor any op makes (forward, and the backward it runs)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("shared", [False, True])
def test_no_tensor_of_samples_by_tokens_by_vocabulary_exists(shared):
    vocab, hidden = 8192, 16  # the vocabulary dominates: any [N, C, V] tensor is the largest by far
    model, rows = tiny("qwen2-untied", vocab=vocab, hidden=hidden), batch()
    full = rows.completion_ids.numel() * vocab
    for chunk, expect_full in ((None, True), (32, False)):
        saved = []  # every tensor kept for the backward: chunks' logits kept alive together would add up here
        with LargestTensor() as probe, torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            scores(model, rows, shared, chunk)
        if expect_full:
            assert probe.largest >= full and sum(saved) >= full  # the probes see the plain path's logits
        else:
            assert probe.largest <= max(32 * vocab, vocab * hidden) < full / 4  # one chunk's logits, or the head's gradient
            assert sum(saved) < full / 4


def test_a_head_not_known_to_be_plain_falls_back_with_one_warning(caplog):
    """Gemma 2 soft-caps its logits: lm_head(hidden) is not its logits, so chunking would be wrong, silently."""
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5)
    model, rows = AutoModelForCausalLM.from_config(config).train(), batch()
    model.config.model_type = "gemma2-test"  # a type no other test warns about
    mask = rows.token_mask.bool()
    head_logits = model.get_output_embeddings()(completion_hidden(model, rows))
    assert (head_logits - completion_logits(model, rows)).abs().max() > 1e-2  # the test can fail
    with caplog.at_level(logging.WARNING, logger="rlvr.logprobs"):
        for _ in range(2):
            plain, chunked = scores(model, rows, True, None), scores(model, rows, True, CHUNK)
    assert torch.equal(plain[0][mask], chunked[0][mask])
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1 and "gemma2-test" in caplog.records[0].message


def test_chunk_option_is_checked():
    assert AlgorithmConfig(logprob_chunk_tokens=None).logprob_chunk_tokens is None
    for bad in (0, -1, "x", 1.5):
        with pytest.raises(ValueError, match="algorithm.logprob_chunk_tokens"):
            AlgorithmConfig(logprob_chunk_tokens=bad)
