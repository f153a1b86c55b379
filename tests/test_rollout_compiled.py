"""`rollout.decode`: the static-cache and compiled decoding give the eager path's tokens, from current weights, with a
bounded number of compiled graphs. Most cases compile with torch.compile's `eager` backend (dynamo's tracing, guards
and recompiles, no code generation: seconds); one slow case compiles with inductor (about 30 s on CPU)."""

import pytest
import torch
from transformers import Qwen2ForCausalLM

from rlvr.models.hf import HFModel
from rlvr.models.tiny import build_char_tokenizer, tiny_qwen2_config
from rlvr.rollout.hf import HFEngine

TINY = HFModel("rlvr:tiny-arith")
TOKENIZER = build_char_tokenizer("0123456789+=;#")


@pytest.fixture(scope="module")
def policy_and_tokenizer():
    return TINY.load_policy(), TINY.load_tokenizer()


def random_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_qwen2_config(len(TOKENIZER), hidden=32, layers=1, heads=2)).train()


def engine_for(model, tokenizer, decode, **kw):
    engine = HFEngine(num_generations=1, decode=decode, compile_backend="eager", **kw)
    engine.update_weights(model, tokenizer)
    return engine


def encode(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def tokens(engine, rows, seed=7, **kw):
    torch.manual_seed(seed)
    return [(g.token_ids, g.finished) for g in engine.generate(rows, **kw)]


def test_static_and_compiled_greedy_tokens_equal_eager(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    # Groups of different lengths (left padding), a guided prefix (a distinct row), 10 rows: padded up to 16.
    rows = encode(tok, ["12+34+5="] * 4 + ["100+250+7+9="] * 3 + ["100+250+7+9=100+250=350;"] * 2 + ["5+6="])
    engines = {decode: engine_for(policy, tok, decode, temperature=1.0, max_new_tokens=40, batch_size=16)
               for decode in ("eager", "static", "compiled")}
    for shared in (True, False):
        for engine in engines.values():
            engine.shared_prefix = shared
        expected = tokens(engines["eager"], rows, greedy=True)
        assert all(finished for _, finished in expected)  # real answers, EOS included
        for decode in ("static", "compiled"):
            assert tokens(engines[decode], rows, greedy=True) == expected, (decode, shared)
    assert engines["compiled"].compiles == 1  # one graph for both
    assert policy.training


def test_same_seed_gives_the_same_samples_when_no_rows_are_padded():
    model = random_model()
    rows = encode(TOKENIZER, ["12+34=", "1+2+3+4=", "9=", "77+1="] * 4)  # 16 rows: the compiled mode's own bucket
    expected = tokens(engine_for(model, TOKENIZER, "eager", temperature=1.0, max_new_tokens=16), rows)
    assert len({tuple(t) for t, _ in expected}) > 4  # really sampling
    for decode in ("static", "compiled"):
        assert tokens(engine_for(model, TOKENIZER, decode, temperature=1.0, max_new_tokens=16, batch_size=16), rows) == expected


def test_padded_compiled_samples_follow_the_policy_distribution():
    """Padding rows draw random numbers too, so the seed no longer fixes the tokens: the second token (the first one
    a compiled decoding step samples) must follow the policy's marginal sum_t p(t) p(. | t) over 1,500 samples."""
    model = random_model(1)
    prompt = encode(TOKENIZER, ["12+34="])[0]
    engine = engine_for(model, TOKENIZER, "compiled", temperature=1.0, max_new_tokens=2, batch_size=2048)  # 1,500 -> 2,048 rows
    torch.manual_seed(0)
    second = torch.tensor([g.token_ids[1] for g in engine.generate([prompt] * 1500) if len(g.token_ids) == 2])
    with torch.no_grad():
        first = model(torch.tensor([prompt])).logits[0, -1].softmax(-1)
        vocab = first.numel()
        rows = torch.cat([torch.tensor([prompt] * vocab), torch.arange(vocab)[:, None]], dim=1)
        after = model(rows).logits[:, -1].softmax(-1)
    eos = TOKENIZER.eos_token_id  # an EOS first token ends the sample: condition on it not being drawn
    first[eos] = 0
    marginal = (first / first.sum()) @ after
    empirical = torch.bincount(second, minlength=vocab).float() / len(second)
    assert engine.compiles == 1 and marginal.max() < 0.5  # compiled, and a spread distribution, so the check has power
    assert 0.5 * (empirical - marginal).abs().sum() < 0.08


@pytest.mark.parametrize("lora", [False, True])
def test_weights_updated_between_calls_are_used(lora):
    model = random_model(2)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    rows = encode(TOKENIZER, ["12+34=", "1+2+3+4=", "9=", "77+1="])
    compiled = engine_for(model, TOKENIZER, "compiled", max_new_tokens=12, batch_size=4)
    eager = engine_for(model, TOKENIZER, "eager", max_new_tokens=12)
    before = tokens(compiled, rows, greedy=True)
    assert before == tokens(eager, rows, greedy=True)
    # A real optimizer step on the trainable weights (LoRA's only): in place, as the trainer's are.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=5.0 if lora else 1.0)
    for p in trainable:
        p.grad = torch.randn_like(p)
    optimizer.step()
    after = tokens(compiled, rows, greedy=True)
    assert after == tokens(eager, rows, greedy=True) and after != before
    assert compiled.compiles == 1  # the same graph, reading the updated weights


def test_compiles_are_bounded_across_batch_sizes_and_prompt_widths():
    model = random_model(3)
    engine = engine_for(model, TOKENIZER, "compiled", temperature=1.0, max_new_tokens=16, batch_size=8)
    calls = [(1, "1="), (8, "1+2+3+4+5+6+7+8+9+10="), (3, "12+34="), (5, "1="), (2, "99+1="), (7, "1+2+3=")]
    lengths, counts = set(), []
    for _ in range(3):
        for rows, text in calls:
            engine.generate(encode(TOKENIZER, [text]) * rows)
            lengths.add(engine._cache_len)
        counts.append(engine.compiles)
    # Rows fall in 4 buckets; the cache only grows (to 40 = 21 + 16 + 3 here), so the first pass's later calls and
    # the second pass reuse it: one graph per (row bucket, length) at most, and a third pass compiles nothing.
    assert {engine.row_bucket(r) for r, _ in calls} == {1, 2, 4, 8} and engine._cache_len == 40
    assert counts[1] <= 4 * len(lengths) and len(lengths) <= 2
    assert counts[2] == counts[1] and engine.last_metrics == {"rollout/compiles": float(counts[1])}


def test_decode_option_is_checked_and_auto_goes_by_device():
    with pytest.raises(ValueError, match="rollout.decode must be one of auto | eager | static | compiled, got 'fast'"):
        HFEngine(decode="fast")
    engine = HFEngine()
    assert engine.mode(torch.device("cpu")) == "eager" and engine.mode(torch.device("cuda")) == "compiled"
    assert HFEngine(decode="static").mode(torch.device("cuda")) == "static"


@pytest.mark.slow
def test_inductor_compiled_decoding_matches_eager_and_follows_updates():
    model = random_model(4)
    rows = encode(TOKENIZER, ["12+34=", "1+2+3+4=", "9=", "77+1="])
    engine = HFEngine(num_generations=1, decode="compiled", max_new_tokens=12, batch_size=4)  # inductor, CPU code
    engine.update_weights(model, TOKENIZER)
    eager = engine_for(model, TOKENIZER, "eager", max_new_tokens=12)
    before = tokens(engine, rows, greedy=True)
    assert before == tokens(eager, rows, greedy=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    after = tokens(engine, rows, greedy=True)
    assert after == tokens(eager, rows, greedy=True) and after != before and engine.compiles == 1


def test_max_cache_tokens_fixes_the_cache_length_for_prompts_that_fit():
    model = random_model(5)
    engine = engine_for(model, TOKENIZER, "static", max_new_tokens=8, batch_size=4, max_cache_tokens=64)
    short, long = encode(TOKENIZER, ["1=", "1+2+3+4+5+6+7+8+9+10+11+12="])
    eager = engine_for(model, TOKENIZER, "eager", max_new_tokens=8)
    for rows in ([short], [long, short], [long] * 4):
        assert tokens(engine, rows, greedy=True) == tokens(eager, rows, greedy=True)
        assert engine._cache_len == 64 and engine._caches == {}  # every call's fresh cache has that length; none is kept
    with pytest.raises(ValueError, match="rollout.max_cache_tokens"):
        HFEngine(max_cache_tokens=0)


def test_static_mode_holds_no_cache_between_calls():
    """Uncompiled, nothing needs fixed addresses: a cache per row count kept for the run would only hold memory."""
    model = random_model()
    engine = engine_for(model, TOKENIZER, "static", temperature=1.0, max_new_tokens=4, batch_size=8)
    for rows in range(1, 6):
        engine.generate(encode(TOKENIZER, ["12+34="] * rows), greedy=True)
    assert engine._caches == {}


def test_padding_rows_stop_at_their_first_token(monkeypatch):
    """Rows added to fill a compiled bucket are done from the start: a padding row that samples no EOS must not keep
    the real rows' batch decoding to the full budget."""
    model = random_model(2)
    engine = engine_for(model, TOKENIZER, "compiled", temperature=1.0, max_new_tokens=12, batch_size=8)
    seen = {}
    original = model.generate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen["rows"], seen["sequences"] = kwargs["input_ids"].shape[0], out
        return out

    monkeypatch.setattr(model, "generate", spy)
    rows = encode(TOKENIZER, ["12+34=", "1+2+3+4=", "9="])  # 3 rows -> a bucket of 4
    engine.generate(rows)
    assert seen["rows"] == 4
    width = max(len(r) for r in rows)
    padding_row = seen["sequences"][3, width + 1 :]
    assert (padding_row == TOKENIZER.pad_token_id).all()  # finished after one token: only pad after it
