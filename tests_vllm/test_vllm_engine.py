"""rollout=vllm against rollout=hf on the shipped tiny model, in a venv with vLLM (a CPU build here: `.ci/vllm.sh`).

Greedy tokens must be identical (same weights, float32, same EOS handling); after `update_weights` vLLM must
sample from the new weights. The shipped model is trained, so its greedy answers end in EOS and are not ties.
"""

from __future__ import annotations

import pytest
import torch

from rlvr.data.arithmetic import make_example
from rlvr.models.hf import HFModel
from rlvr.rollout.hf import HFEngine
from rlvr.rollout.vllm import VLLMEngine

TINY = HFModel("rlvr:tiny-arith")
CPU = {"kv_cache_gib": 1, "enforce_eager": True}  # the CPU build: a fixed KV cache, no torch.compile
TEXTS = ["12+34=", "100+250+7=", "5+6+7+8=", "123+456+789=", "1+2+3+4+5=", "999+999+999+999+999="]
# Guided prompts longer than one KV block (128 tokens on CPU), sharing their first block: prefix-cache hits.
_LONG = make_example([123, 456, 789, 5, 67, 890, 12, 345, 678, 9], "long")
LONG = [_LONG.prompt + ";".join(_LONG.steps[:n]) + ";" for n in (8, 9)]


@pytest.fixture(scope="module")
def tok():
    return TINY.load_tokenizer()


@pytest.fixture(scope="module")
def engine():
    """One engine for the module (each build takes seconds and 1 GiB), re-pointed at each test's policy."""
    built = VLLMEngine(num_generations=1, temperature=1.0, max_new_tokens=64, **CPU)
    yield built
    built.close()


def encode(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def hf_greedy(policy, tok, prompts, max_new_tokens=64):
    hf = HFEngine(num_generations=1, temperature=0.0, max_new_tokens=max_new_tokens)
    hf.update_weights(policy, tok)
    return [g.token_ids for g in hf.generate(prompts)], hf


def guided(tok, prompts):
    """Prompt + the first characters of the model's own answer (a guidance prefix), and + a wrong one."""
    answers = ["12+34=4", "100+250=350;350+7=3", "5+6=11;11+7=18;", "123+456=579;579+789=136"]
    return prompts + encode(tok, answers + LONG)


def test_greedy_tokens_equal_hf_with_guided_prefixes(engine, tok):
    policy = TINY.load_policy()
    prompts = guided(tok, encode(tok, TEXTS))
    engine.update_weights(policy, tok)
    expected, _ = hf_greedy(policy, tok, prompts)
    got = engine.generate(prompts, greedy=True)
    assert [g.token_ids for g in got] == expected
    for g in got:  # the trained model answers and stops: EOS kept, once, at the end
        assert g.finished and g.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in g.token_ids[:-1]
    cut = engine.generate(prompts, max_new_tokens=5, greedy=True)
    assert [g.token_ids for g in cut] == [e[:5] for e in expected] and not any(g.finished for g in cut)


def test_after_an_update_vllm_generates_from_the_new_weights(engine, tok):
    policy = TINY.load_policy()
    prompts = guided(tok, encode(tok, TEXTS))
    engine.update_weights(policy, tok)
    before = [g.token_ids for g in engine.generate(prompts, greedy=True)]  # also caches the long prompts' first block
    # An optimizer step that pushes the model away from its own greedy answers.
    optimizer = torch.optim.SGD(policy.parameters(), lr=20.0)
    ids = torch.tensor([prompts[0] + before[0]])
    loss = -torch.nn.functional.cross_entropy(policy(ids).logits[0, :-1], ids[0, 1:])
    loss.backward()
    optimizer.step()
    engine.update_weights(policy)  # as the trainer calls it after every step: no tokenizer
    expected, _ = hf_greedy(policy, tok, prompts)
    got = [g.token_ids for g in engine.generate(prompts, greedy=True)]
    assert expected != before, "the step did not change HF's greedy output: the test proves nothing"
    assert got == expected


def test_sampling_returns_one_completion_per_prompt_with_consistent_finished_flags(engine, tok):
    policy = TINY.load_policy()
    engine.update_weights(policy, tok)
    group = encode(tok, ["123+456+789+5="]) * 8 + encode(tok, ["7+8="]) * 8
    torch.manual_seed(3)
    first = engine.generate(group, max_new_tokens=12)
    torch.manual_seed(3)
    again = engine.generate(group, max_new_tokens=12)
    assert len(first) == len(group)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]  # from the trainer's seeded torch RNG
    assert len({tuple(g.token_ids) for g in first[:8]}) > 1  # really sampling
    for g in first:
        eos = [i for i, t in enumerate(g.token_ids) if t == tok.eos_token_id]
        if g.finished:
            assert eos == [len(g.token_ids) - 1]
        else:
            assert eos == [] and len(g.token_ids) == 12
    assert any(g.finished for g in first) and any(not g.finished for g in first)


def test_sampling_follows_pushed_weights(engine, tok):
    """After an update, the first sampled token's frequencies over 2,000 draws match the new weights'
    softmax (HF), not the old one's. The update flattens the distribution (final norm x 0.2)."""
    policy = TINY.load_policy()
    engine.update_weights(policy, tok)
    prompt = encode(tok, [LONG[0]])[0]
    engine.generate([prompt], max_new_tokens=1)  # caches the prompt's first block under the old weights
    with torch.no_grad():
        old = torch.softmax(policy(torch.tensor([prompt])).logits[0, -1], -1)
        policy.model.norm.weight.mul_(0.2)
        new = torch.softmax(policy(torch.tensor([prompt])).logits[0, -1], -1)
    engine.update_weights(policy)
    torch.manual_seed(0)
    draws = [g.token_ids[0] for g in engine.generate([prompt] * 2000, max_new_tokens=1)]
    seen = torch.bincount(torch.tensor(draws), minlength=len(new)).float() / len(draws)
    assert (old - new).abs().sum() / 2 > 0.3, "the update hardly changes the distribution: the test proves nothing"
    assert (seen - new).abs().sum() / 2 < 0.06  # total variation; about 0.03 expected from 2,000 draws


def test_lora_policy_is_merged_without_touching_it(engine, tok):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(TINY.load_policy(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)  # a trained adapter (B starts at zero)
    base_before = {k: v.clone() for k, v in policy.get_base_model().state_dict().items() if "base_layer" in k}
    prompts = encode(tok, TEXTS[:3] + LONG[:1])
    engine.update_weights(policy, tok)
    got = [g.token_ids for g in engine.generate(prompts, greedy=True)]
    expected, _ = hf_greedy(policy, tok, prompts)
    plain, _ = hf_greedy(TINY.load_policy(), tok, prompts)
    assert expected != plain, "the adapter does not change the output: the test proves nothing"
    assert got == expected
    after = policy.get_base_model().state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())
    assert not any(getattr(m, "merged", False) for m in policy.modules())


def test_a_policy_that_no_longer_matches_the_engine_is_an_error(engine, tok):
    """vLLM itself only warns about weights it is not given (and would keep sampling from the old ones)."""
    from transformers import AutoModelForCausalLM

    engine.update_weights(TINY.load_policy(), tok)
    engine.generate(encode(tok, TEXTS[:1]), max_new_tokens=2)
    config = TINY.load_policy().config
    config.num_hidden_layers = 3  # as if a layer's tensors had gone (e.g. sharded away)
    engine.update_weights(AutoModelForCausalLM.from_config(config))
    with pytest.raises(RuntimeError, match=r"no longer match.*missing \['model\.layers\.3\."):
        engine.generate(encode(tok, TEXTS[:1]), max_new_tokens=2)
