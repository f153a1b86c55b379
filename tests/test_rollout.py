"""The HF roll-out engine: budget, EOS, greedy determinism, no leaking checkpoint sampling defaults."""

import pytest
import torch

from rlvr.models.hf import HFModel
from rlvr.rollout.hf import HFEngine
from rlvr.tensors import pad_sequences

TINY = HFModel("rlvr:tiny-arith")


@pytest.fixture(scope="module")
def policy_and_tokenizer():
    return TINY.load_policy(), TINY.load_tokenizer()


def engine_for(policy, tokenizer, **kw):
    engine = HFEngine(num_generations=1, **kw)
    engine.update_weights(policy, tokenizer)
    return engine


def prompts(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_budget_eos_and_left_padding_do_not_change_greedy_answers(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    engine = engine_for(policy, tok, temperature=0.0, max_new_tokens=64, batch_size=8)
    texts = ["12+34=", "100+250+7=", "5+6+7+8="]
    batched = engine.generate(prompts(tok, texts))
    alone = [engine.generate(prompts(tok, [t]))[0] for t in texts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]  # padding is invisible
    for g in batched:
        assert g.finished and g.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in g.token_ids[:-1]
    short = engine.generate(prompts(tok, texts), max_new_tokens=3)
    assert all(len(g.token_ids) == 3 and not g.finished for g in short)


def test_checkpoint_generation_defaults_do_not_leak_into_sampling(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    engine = engine_for(policy, tok, temperature=0.0, max_new_tokens=32)
    before = engine.generate(prompts(tok, ["123+456+789="]))[0].token_ids
    policy.generation_config.repetition_penalty = 50.0  # as some instruct checkpoints ship
    try:
        after = engine.generate(prompts(tok, ["123+456+789="]))[0].token_ids
    finally:
        policy.generation_config.repetition_penalty = 1.0
    assert after == before


def test_sampling_follows_the_seed_and_generate_restores_train_mode(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    engine = engine_for(policy, tok, temperature=1.0, max_new_tokens=32)
    batch = prompts(tok, ["123+456+789+5="] * 16)
    torch.manual_seed(3)
    first = [g.token_ids for g in engine.generate(batch)]
    torch.manual_seed(3)
    again = [g.token_ids for g in engine.generate(batch)]
    assert first == again and len({tuple(t) for t in first}) > 1  # seeded, and really sampling
    assert policy.training


def test_generate_before_update_weights_is_an_error():
    with pytest.raises(RuntimeError, match="update_weights"):
        HFEngine().generate([[1, 2]])


def test_shared_prefill_gives_the_same_tokens_as_plain_generation(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    # Groups of repeated prompts of different lengths, some with a guidance prefix (distinct rows).
    texts = ["12+34+5="] * 4 + ["100+250+7+9="] * 3 + ["100+250+7+9=100+250=350;"] * 2 + ["5+6="]
    rows = prompts(tok, texts)
    for greedy in (True, False):
        outputs = []
        for shared in (True, False):
            engine = engine_for(policy, tok, temperature=1.0, max_new_tokens=24, shared_prefix=shared)
            torch.manual_seed(7)
            outputs.append([(g.token_ids, g.finished) for g in engine.generate(rows, greedy=greedy)])
        assert outputs[0] == outputs[1]
    (cache,) = HFEngine._prefill_once(policy, *pad_sequences(rows, tok.pad_token_id)).values()
    assert cache.layers[0].keys.shape[0] == len(rows)  # the prefill really ran, repeated to every row
