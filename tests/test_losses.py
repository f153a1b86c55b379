"""Policy loss numerics against hand-computed cases."""

import math

import pytest
import torch

from rlvr.losses import aggregate, aggregation_weight, kl_penalty, policy_loss, token_logprobs


def test_token_logprobs_match_log_softmax_with_temperature():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]])
    tokens = torch.tensor([[1, 2]])
    got = token_logprobs(logits, tokens, temperature=2.0)
    expected = torch.log_softmax(logits / 2.0, -1)[0, [0, 1], [1, 2]]
    assert torch.allclose(got[0], expected)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log pi/pi_ref = log 2
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    # identical policies: every estimator is exactly 0; k3 is never negative
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(logp, ref, "k4")


def test_k3_is_unbiased_estimate_of_kl():
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    samples = torch.multinomial(p, 200_000, replacement=True)
    estimate = kl_penalty(p.log()[samples], q.log()[samples], "k3").mean()
    exact = (p * (p / q).log()).sum()
    assert estimate.item() == pytest.approx(exact.item(), abs=5e-3)


LOSSES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_aggregation_modes_hand_computed():
    assert aggregate(LOSSES, MASK, "token_mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    # sequence 3 has no token: left out of the sequence mean
    assert aggregate(LOSSES, MASK, "seq_mean_token_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(LOSSES, MASK, "seq_mean_token_sum_norm", norm_length=8).item() == pytest.approx((6 / 8 + 4 / 8) / 2)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(LOSSES, MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(LOSSES, MASK, "sum")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batch_weights_reproduce_the_whole_batch_loss(mode):
    torch.manual_seed(1)
    losses = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.4).long()
    mask[2] = 0
    whole = aggregate(losses, mask, mode, norm_length=5)
    parts = [slice(0, 2), slice(2, 5), slice(5, 6)]
    summed = sum(aggregate(losses[p], mask[p], mode, norm_length=5) * aggregation_weight(mask[p], mask, mode) for p in parts)
    assert summed.item() == pytest.approx(whole.item(), rel=1e-6)


def test_clip_at_both_bounds():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5 with positive and negative advantages
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, aggregation="token_mean")
    # A>0, r=1.5: clipped to 1.28 -> -1.28 | A>0, r=0.5: unclipped -0.5 (pessimistic max)
    # A<0, r=1.5: unclipped 1.5 | A<0, r=0.5: clipped to 0.8 -> 0.8
    expected = (-1.28 - 0.5 + 1.5 + 0.8) / 4
    assert loss.item() == pytest.approx(expected)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


def test_clipped_tokens_get_no_gradient_and_ratio_one_gives_plain_policy_gradient():
    logp = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, 2.0]]), torch.ones(1, 2))
    loss.backward()
    # token 0 is clipped (r=1.5 > 1.2 with A>0): zero gradient; token 1: d(-A r)/dlogp = -A r / 2 tokens
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-2.0 / 2)


def test_masked_tokens_do_not_change_the_loss_and_kl_adds_beta_times_kl():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    old = logp.clone()
    ref = torch.tensor([[-1.5, -2.0, -9.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0]])
    base, _ = policy_loss(logp, old, adv, mask)
    with_kl, stats = policy_loss(logp, old, adv, mask, ref_logprobs=ref, kl_beta=0.1, kl_estimator="k1")
    assert base.item() == pytest.approx(-1.0)
    assert stats["kl"].item() == pytest.approx((0.5 + 0.0) / 2)  # masked third token left out
    assert with_kl.item() == pytest.approx(-1.0 + 0.1 * 0.25)
    with pytest.raises(ValueError, match="reference"):
        policy_loss(logp, old, adv, mask, kl_beta=0.1)
