"""GRPO advantages: hand-computed groups, every scale, zero-variance groups, loop vs vectorised."""

import math

import pytest
import torch

from rlvr.advantages.base import group_normalize
from rlvr.advantages.grpo import GRPOAdvantage
from tests.helpers import make_batch, with_rewards


def loop_group_normalize(rewards, group_ids, scale, eps=1e-6):
    """Readable reference: one group at a time, straight from the GRPO paper."""
    out = []
    all_rewards = [float(r) for r in rewards]
    batch_mean = sum(all_rewards) / len(all_rewards)
    batch_std = math.sqrt(sum((r - batch_mean) ** 2 for r in all_rewards) / (len(all_rewards) - 1))
    for i, r in enumerate(all_rewards):
        members = [all_rewards[j] for j in range(len(all_rewards)) if group_ids[j] == group_ids[i]]
        mean = sum(members) / len(members)
        if max(members) == min(members):
            out.append(0.0)
            continue
        std = math.sqrt(sum((m - mean) ** 2 for m in members) / (len(members) - 1))
        divisor = {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[scale]
        out.append((r - mean) / divisor)
    return torch.tensor(out)


def test_hand_computed_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = group_normalize(rewards, torch.zeros(4, dtype=torch.long), "group")
    # mean 0.25, unbiased std sqrt(0.25) = 0.5 -> (0.75/0.5, -0.25/0.5)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    assert torch.allclose(group_normalize(rewards, torch.zeros(4, dtype=torch.long), "none"), torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("value", [0.0, 1.0, 0.7, 1e-3])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_group_is_exactly_zero(value, scale):
    rewards = torch.tensor([value] * 8 + [1.0, 0.0, 1.0, 0.0] * 2)
    groups = torch.arange(16) // 8
    adv = group_normalize(rewards, groups, scale)
    assert (adv[:8] == 0).all()
    assert torch.isfinite(adv).all()
    assert adv[8:].abs().min() > 0


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_vectorised_matches_loop(scale):
    torch.manual_seed(0)
    rewards = torch.rand(24).round(decimals=1)
    rewards[:6] = 0.5
    groups = torch.arange(24) // 6
    assert torch.allclose(group_normalize(rewards, groups, scale), loop_group_normalize(rewards, groups.tolist(), scale), atol=1e-5)


def test_group_advantages_sum_to_zero():
    torch.manual_seed(1)
    rewards = torch.rand(32)
    groups = torch.arange(32) // 8
    for scale in ("group", "batch", "none"):
        adv = group_normalize(rewards, groups, scale)
        assert torch.allclose(adv.view(4, 8).sum(-1), torch.zeros(4), atol=1e-5)


def test_unknown_scale_is_rejected():
    with pytest.raises(ValueError, match=r"advantage.scale must be one of group \| batch \| none, got 'std'"):
        GRPOAdvantage(scale="std")
    with pytest.raises(ValueError, match=r"advantage.scale must be one of group \| batch \| none, got 'std'"):
        group_normalize(torch.zeros(2), torch.zeros(2, dtype=torch.long), "std")


def test_grpo_broadcasts_to_loss_tokens_only():
    batch = make_batch([["12+34=46;46+5=51#51", "1#1"]], prefixes=[["12+34=46;", ""]], loss_on_guidance=False)
    with_rewards(batch, [1.0, 0.0])
    adv = GRPOAdvantage()(batch)
    assert adv.shape == batch.completion_ids.shape
    assert torch.equal(adv != 0, batch.loss_mask.bool())
    assert adv[0, batch.guidance_tokens[0]].item() == pytest.approx(0.5 / math.sqrt(0.5), rel=1e-4)  # centred ±0.5, unbiased std sqrt(0.5)
    assert adv[1, 0].item() == pytest.approx(-0.5 / math.sqrt(0.5), rel=1e-4)
