"""Policy-loss plugins against hand-computed cases, and the GSPO token form against its sequence-level twin."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import rlvr.conf
from pathlib import Path
from rlvr.logprobs import token_logprobs
from rlvr.losses.base import KL_ESTIMATORS, make_aggregation
from rlvr.losses.gspo import GSPOLoss
from rlvr.losses.ppo_clip import PPOClipLoss

CONF = Path(rlvr.conf.__file__).parent / "loss"


def test_token_logprobs_match_log_softmax_with_temperature():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]])
    tokens = torch.tensor([[1, 2]])
    got = token_logprobs(logits, tokens, temperature=2.0)
    expected = torch.log_softmax(logits / 2.0, -1)[0, [0, 1], [1, 2]]
    assert torch.allclose(got[0], expected)


def kl(name, logp, ref):
    return KL_ESTIMATORS[name](logp - ref)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log pi/pi_ref = log 2
    assert kl("k1", logp, ref).item() == pytest.approx(math.log(2))
    assert kl("k2", logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl("k3", logp, ref).item() == pytest.approx(0.5 - 1 + math.log(2))
    # identical policies: every estimator is exactly 0; k3 is never negative
    assert kl("k3", ref, ref).item() == 0.0
    assert (kl("k3", torch.randn(100), torch.randn(100)) >= 0).all()
    with pytest.raises(ValueError, match="loss.kl_estimator must be one of k1 \\| k2 \\| k3, got 'k4'"):
        PPOClipLoss(kl_estimator="k4")


def test_k3_is_unbiased_estimate_of_kl():
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    samples = torch.multinomial(p, 200_000, replacement=True)
    estimate = kl("k3", p.log()[samples], q.log()[samples]).mean()
    exact = (p * (p / q).log()).sum()
    assert estimate.item() == pytest.approx(exact.item(), abs=5e-3)


LOSSES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_aggregation_modes_hand_computed():
    assert make_aggregation("token_mean")(LOSSES, MASK).item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    # sequence 3 has no token: left out of the sequence mean
    assert make_aggregation("seq_mean_token_mean")(LOSSES, MASK).item() == pytest.approx((2.0 + 4.0) / 2)
    assert make_aggregation("seq_mean_token_sum_norm", 8)(LOSSES, MASK).item() == pytest.approx((6 / 8 + 4 / 8) / 2)
    with pytest.raises(ValueError, match="loss.norm_length"):
        make_aggregation("seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="loss.aggregation must be one of token_mean"):
        make_aggregation("sum")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batch_weights_reproduce_the_whole_batch_loss(mode):
    torch.manual_seed(1)
    losses = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.4).long()
    mask[2] = 0
    aggregate = make_aggregation(mode, 5)
    whole = aggregate(losses, mask)
    parts = [slice(0, 2), slice(2, 5), slice(5, 6)]
    summed = sum(aggregate(losses[p], mask[p]) * aggregate.weight(mask[p], mask) for p in parts)
    assert summed.item() == pytest.approx(whole.item(), rel=1e-6)


def test_clip_at_both_bounds():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5 with positive and negative advantages
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = PPOClipLoss(clip_low=0.2, clip_high=0.28)(logp, old, adv, torch.ones(1, 4))
    # A>0, r=1.5: clipped to 1.28 -> -1.28 | A>0, r=0.5: unclipped -0.5 (pessimistic max)
    # A<0, r=1.5: unclipped 1.5 | A<0, r=0.5: clipped to 0.8 -> 0.8
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 1.5 + 0.8) / 4)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


def test_clipped_tokens_get_no_gradient_and_ratio_one_gives_plain_policy_gradient():
    logp = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    loss, _ = PPOClipLoss()(logp, torch.zeros(1, 2), torch.tensor([[1.0, 2.0]]), torch.ones(1, 2))
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
    base, _ = PPOClipLoss()(logp, old, adv, mask)
    plugin = PPOClipLoss(kl_beta=0.1, kl_estimator="k1")
    with_kl, stats = plugin(logp, old, adv, mask, ref)
    assert plugin.needs_reference and not PPOClipLoss().needs_reference
    assert base.item() == pytest.approx(-1.0)
    assert stats["kl"].item() == pytest.approx((0.5 + 0.0) / 2)  # masked third token left out
    assert with_kl.item() == pytest.approx(-1.0 + 0.1 * 0.25)
    with pytest.raises(ValueError, match="reference"):
        plugin(logp, old, adv, mask)


def test_bad_clip_options_name_the_option():
    with pytest.raises(ValueError, match="loss.clip_low must be a number >= 0 and < 1, got 1.5"):
        PPOClipLoss(clip_low=1.5)
    with pytest.raises(ValueError, match="loss.kl_beta"):
        GSPOLoss(kl_beta=-1.0)


def test_gspo_ratio_is_the_geometric_mean_and_clips_per_sequence():
    # sequence 0: token ratios 2 and 0.5 (second masked token ignored) -> s = sqrt(2 * 0.5) = 1: unclipped
    # sequence 1: one token, ratio 1.1 -> clipped at 1 + 4e-4 for A > 0
    logp = torch.log(torch.tensor([[2.0, 0.5, 7.0], [1.1, 1.0, 1.0]]))
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    loss, stats = GSPOLoss()(logp, old, adv, mask)
    assert loss.item() == pytest.approx((-1.0 * 1.0 + -2.0 * (1 + 4e-4)) / 2, rel=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx((1.0 + 1.0 + 1.1) / 3, rel=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)


def test_gspo_token_form_has_the_papers_sequence_level_gradient():
    """The readable twin: GSPO written per sequence, s_i = exp(mean_t log r_t), J = mean_i min(s_i A_i, clip(s_i) A_i)."""
    torch.manual_seed(0)
    n, c = 5, 7
    logp = (torch.randn(n, c) * 0.01 - 1.0).requires_grad_()
    old = logp.detach() + torch.randn(n, c) * 0.01
    mask = (torch.rand(n, c) > 0.3).long()
    mask[:, 0] = 1
    per_seq_adv = torch.randn(n)
    plugin = GSPOLoss(clip_low=0.002, clip_high=0.003)
    loss, _ = plugin(logp, old, per_seq_adv[:, None].expand(n, c), mask)
    (grad_token_form,) = torch.autograd.grad(loss, logp)

    log_s = ((logp - old) * mask).sum(-1) / mask.sum(-1)
    s = log_s.exp()
    objective = torch.minimum(s * per_seq_adv, s.clamp(1 - 0.002, 1 + 0.003) * per_seq_adv).mean()
    (grad_sequence_form,) = torch.autograd.grad(-objective, logp)
    assert torch.allclose(grad_token_form, grad_sequence_form, atol=1e-7)
    assert (grad_sequence_form != 0).any()  # some sequences are inside the clip range, so the check is not vacuous


@pytest.mark.parametrize("name, cls", [("ppo_clip", PPOClipLoss), ("gspo", GSPOLoss)])
def test_loss_yaml_builds_its_plugin(name, cls):
    node = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), {"norm_length": 64})
    assert type(instantiate(node)) is cls
