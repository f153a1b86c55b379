"""Memory and speed paths equal the plain ones: shared-prefix forward (log-probs and gradients), token-budget
micro-batches, the skipped old-log-prob pass, and no dropout in the policy."""

import pytest
import torch
from transformers import Qwen2ForCausalLM

from tests.helpers import TOKENIZER, make_batch
from rlvr.batch import micro_batch_tokens
from rlvr.logprobs import batch_logprobs, completion_logits, token_logprobs, unique_rows
from rlvr.models.hf import HFModel, disable_dropout
from rlvr.models.tiny import tiny_qwen2_config

COMPLETIONS = [["12+34=46;46+5=51#51", "12+34=46#46", "1", "12+34=47;47+5=52#52"],
               ["7+8=15;15+9=24#24", "7+8=15;15+9=23#23", "7+8=16#16", "7+8=15;15+9=25#25"],
               ["100+200=300#300", "100+200=300;300+1=301#301", "", "1#1"]]
TERMS = [[12, 34, 5], [7, 8, 9], [100, 200, 1]]  # prompts of different lengths: left padding differs per group
PREFIXES = [["", "12+34=46;", "", "12+34="], ["", "", "7+8=15;", "7+8=15;"], ["100+200=300;", "", "", ""]]


def tiny_model(seed=0, **config):
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_qwen2_config(len(TOKENIZER), hidden=64, layers=2, heads=2, **config))
    return model.train()


def guided_batch():
    return make_batch(COMPLETIONS, terms=TERMS, prefixes=PREFIXES)


def logprobs_and_grads(model, batch, shared):
    model.zero_grad(set_to_none=True)
    logprobs = token_logprobs(completion_logits(model, batch, shared_prefix=shared), batch.completion_ids)
    weights = torch.linspace(-1, 1, logprobs.numel()).view_as(logprobs)  # a loss that weighs every token differently
    (logprobs * weights * batch.token_mask).sum().backward()
    return logprobs.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def relative_l2(a, b):
    num = sum(((a[k] - b[k]) ** 2).sum() for k in a)
    return float(num.sqrt() / sum((a[k] ** 2).sum() for k in a).sqrt())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prefix_equals_plain_forward(checkpointing):
    model, batch = tiny_model(), guided_batch()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    plain_lp, plain_grads = logprobs_and_grads(model, batch, shared=False)
    shared_lp, shared_grads = logprobs_and_grads(model, batch, shared=True)
    mask = batch.token_mask.bool()
    assert (plain_lp - shared_lp)[mask].abs().max() < 1e-5
    assert plain_grads.keys() == shared_grads.keys() and len(plain_grads) > 0
    assert relative_l2(plain_grads, shared_grads) < 1e-5
    # The test can fail: positions that ignore the prompts' padding change the log-probs by far more.
    wrong = batch.select(torch.arange(batch.num_samples))
    wrong.prompt_mask = torch.ones_like(wrong.prompt_mask)
    assert (token_logprobs(completion_logits(model, wrong, shared_prefix=True), batch.completion_ids) - plain_lp)[mask].abs().max() > 1e-3


def test_unique_rows_maps_every_sample_to_its_prompt():
    batch = guided_batch()
    first, inverse = unique_rows(batch.prompt_ids, batch.prompt_mask)
    assert len(first) == 3  # three prompts, guided or not: guidance is part of the completion
    assert torch.equal(batch.prompt_ids[first][inverse], batch.prompt_ids)
    assert inverse.tolist() == [inverse[0]] * 4 + [inverse[4]] * 4 + [inverse[8]] * 4


def test_micro_batch_plan_respects_the_token_budget_and_covers_every_sample():
    batch = guided_batch()
    prompt_len, completion_len = batch.prompt_mask.sum(-1), batch.token_mask.sum(-1).clamp(min=1)
    for shared in (False, True):
        for budget in (1, 40, 80, 10_000):
            runs = batch.micro_batches(max_samples=None, max_tokens=budget, shared_prefix=shared)
            assert torch.equal(torch.cat(runs), torch.arange(batch.num_samples))  # in order, each once
            for run in runs:
                cost = micro_batch_tokens(prompt_len[run].tolist(), completion_len[run].tolist(), batch.group_ids[run].tolist(), shared)
                assert len(run) == 1 or cost <= budget
    assert len(batch.micro_batches(None, 10_000, True)) == 1
    assert [len(r) for r in batch.micro_batches(5, None, False)] == [5, 5, 2]
    # Hand count: 2 samples of one group, prompts 9 tokens, completions up to 20: 2 x (9 + 20) plain, 9 + 2 x 20 shared.
    assert micro_batch_tokens([9, 9], [20, 12], [0, 0], shared_prefix=False) == 58
    assert micro_batch_tokens([9, 9], [20, 12], [0, 0], shared_prefix=True) == 49


def test_trimmed_micro_batches_give_the_same_logprobs():
    model, batch = tiny_model().eval(), guided_batch()
    whole = token_logprobs(completion_logits(model, batch), batch.completion_ids)
    for shared in (False, True):
        runs = batch.micro_batches(max_samples=None, max_tokens=60, shared_prefix=shared)
        assert len(runs) > 2
        split = batch_logprobs(model, batch, 1.0, runs, shared_prefix=shared)
        mask = batch.token_mask.bool()
        assert (split - whole)[mask].abs().max() < 1e-5
        assert torch.isfinite(split).all()  # columns a micro-batch did not run are filled (0), not left uninitialised


def test_trimmed_drops_only_unused_padding_columns():
    batch = guided_batch()
    short = batch.select(torch.tensor([2, 10])).trimmed()  # the two shortest completions
    assert short.completion_ids.shape[1] == max(1, int(batch.token_mask[[2, 10]].sum(-1).max()))
    assert short.prompt_mask[:, 0].any()  # the first prompt column is used by one of them
    assert torch.equal(short.loss_mask.sum(-1), batch.loss_mask[[2, 10]].sum(-1))


def test_disable_dropout_makes_the_training_forward_deterministic():
    model, batch = tiny_model(attention_dropout=0.5), guided_batch()
    ids, mask = batch.input_ids, batch.attention_mask

    def logits():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    torch.manual_seed(1)
    assert not torch.allclose(logits(), logits())  # dropout on: two passes differ (the test can fail)
    disable_dropout(model)
    assert torch.equal(logits(), logits())
    assert model.config.attention_dropout == 0.0


def test_policy_loads_without_dropout(tmp_path):
    tiny_model(attention_dropout=0.3).save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    policy = HFModel(str(tmp_path)).load_policy()
    assert policy.training and policy.config.attention_dropout == 0.0
    assert all(m.attention_dropout == 0.0 for m in policy.modules() if hasattr(m, "attention_dropout"))


def test_on_policy_step_skips_the_old_logprob_pass(tmp_path, monkeypatch):
    import rlvr.module
    from tests.test_module import fit_on_hand_batch

    calls = []
    original = rlvr.module.batch_logprobs
    monkeypatch.setattr(rlvr.module, "batch_logprobs", lambda *a, **k: calls.append(1) or original(*a, **k))
    fit_on_hand_batch(tmp_path / "on_policy")
    assert calls == []  # ppo_epochs=1, mini_batches=1: the update's own log-probs, detached, are the old ones
    fit_on_hand_batch(tmp_path / "two_epochs", "algorithm.ppo_epochs=2")
    assert calls == [1]
