"""The GRPO family's other estimators (rloo, reinforce_pp, reinforce_pp_baseline, opo, gpg, passk): hand-computed
groups, a readable loop version against the vectorised one, all-equal groups, the loss mask and bad options."""

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import rlvr.conf
from rlvr.advantages.gpg import GPGAdvantage
from rlvr.advantages.grpo import GRPOAdvantage
from rlvr.advantages.opo import OPOAdvantage
from rlvr.advantages.passk import PassKAdvantage
from rlvr.advantages.reinforce_pp import ReinforcePPAdvantage, ReinforcePPBaselineAdvantage
from rlvr.advantages.rloo import RLOOAdvantage
from tests.helpers import make_batch, with_rewards

CONF = Path(rlvr.conf.__file__).parent / "advantage"
ESTIMATORS = {
    "rloo": RLOOAdvantage, "reinforce_pp": ReinforcePPAdvantage, "reinforce_pp_baseline": ReinforcePPBaselineAdvantage,
    "opo": OPOAdvantage, "gpg": GPGAdvantage, "passk": PassKAdvantage,
}


def fake_batch(rewards, group_ids, loss_mask, correct=None):
    """What an estimator reads of a roll-out batch."""
    rewards = torch.tensor(rewards, dtype=torch.float32)
    correct = torch.tensor(correct) if correct is not None else rewards == 1.0
    return SimpleNamespace(rewards=rewards, correct=correct, group_ids=torch.tensor(group_ids), loss_mask=torch.tensor(loss_mask))


def random_batch(seed, groups=5, size=4, width=9):
    g = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(groups * size, generator=g) > 0.5).float().tolist()
    rewards[:size] = [1.0] * size  # one all-correct group
    rewards[size:2 * size] = [0.0] * size  # one all-wrong group
    rewards[-1] = 0.5  # a shaped reward
    lengths = torch.randint(1, width - 2, (groups * size,), generator=g)
    starts = torch.randint(0, 3, (groups * size,), generator=g)  # unscored guidance tokens first
    cols = torch.arange(width)
    mask = ((cols >= starts[:, None]) & (cols < (starts + lengths)[:, None])).long()
    return fake_batch(rewards, [i // size for i in range(groups * size)], mask.tolist())


def groups_of(batch):
    out = {}
    for i, gid in enumerate(batch.group_ids.tolist()):
        out.setdefault(gid, []).append(i)
    return out


# ---- readable references: one sample (or token) at a time --------------------------------------------------------
def loop_rloo(batch):
    r, out = batch.rewards.tolist(), []
    members = groups_of(batch)
    for i, gid in enumerate(batch.group_ids.tolist()):
        others = [r[j] for j in members[gid] if j != i]
        out.append(r[i] - sum(others) / len(others))
    return out


def loop_opo(batch):
    r, lengths, out = batch.rewards.tolist(), batch.loss_mask.sum(-1).tolist(), []
    members = groups_of(batch)
    for i, gid in enumerate(batch.group_ids.tolist()):
        baseline = sum(lengths[j] * r[j] for j in members[gid]) / sum(lengths[j] for j in members[gid])
        out.append(r[i] - baseline)
    return out


def loop_gpg(batch, alpha="nonzero_rewards"):
    r, members = batch.rewards.tolist(), groups_of(batch)
    if alpha == "nonzero_rewards":
        signal = sum(1 for x in r if x != 0)
    else:  # valid_samples: members of groups whose rewards are not all equal
        signal = sum(len(m) for m in members.values() if len({r[j] for j in m}) > 1)
    alpha = len(r) / max(signal, 1)
    return [alpha * (r[i] - sum(r[j] for j in members[g]) / len(members[g])) for i, g in enumerate(batch.group_ids.tolist())]


def loop_passk(batch, k):
    """The definition: every k-subset of the group scores max(correct); a sample's advantage is the mean, over the
    subsets that hold it, of (subset score - mean score) / population std of the scores."""
    c, out = batch.correct.tolist(), {}
    for members in groups_of(batch).values():
        subsets = list(itertools.combinations(members, k))
        scores = [float(any(c[j] for j in s)) for s in subsets]
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((x - mean) ** 2 for x in scores) / len(scores))
        for i in members:
            held = [x for s, x in zip(subsets, scores) if i in s]
            out[i] = 0.0 if std == 0 else sum((x - mean) / std for x in held) / len(held)
    return [out[i] for i in range(len(c))]


def loop_whiten(values, mask, eps):
    scored = [v for row_v, row_m in zip(values, mask) for v, m in zip(row_v, row_m) if m]
    mean = sum(scored) / len(scored)
    std = math.sqrt(sum((v - mean) ** 2 for v in scored) / (len(scored) - 1) + eps)
    return [[(v - mean) / std if m else 0.0 for v, m in zip(row_v, row_m)] for row_v, row_m in zip(values, mask)]


def loop_reinforce_pp(batch, gamma, eps):
    returns = []
    for r, row in zip(batch.rewards.tolist(), batch.loss_mask.tolist()):
        scored_after = [sum(row[t + 1:]) for t in range(len(row))]
        returns.append([r * gamma**scored_after[t] if m else 0.0 for t, m in enumerate(row)])
    return loop_whiten(returns, batch.loss_mask.tolist(), eps)


def loop_reinforce_pp_baseline(batch, eps):
    r, members = batch.rewards.tolist(), groups_of(batch)
    centred = [r[i] - sum(r[j] for j in members[g]) / len(members[g]) for i, g in enumerate(batch.group_ids.tolist())]
    return loop_whiten([[c] * batch.loss_mask.shape[1] for c in centred], batch.loss_mask.tolist(), eps)


def per_sample_of(adv, batch):
    """[N] from [N, C] advantages that must be constant over each sample's scored tokens."""
    mask = batch.loss_mask.bool()
    first = torch.stack([row[m][0] if m.any() else row.new_zeros(()) for row, m in zip(adv, mask)])
    assert torch.equal(adv, first[:, None] * mask)  # the same value on every scored token, 0 elsewhere
    return first


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name, estimator, reference", [
    ("rloo", RLOOAdvantage(), loop_rloo),
    ("opo", OPOAdvantage(), loop_opo),
    ("gpg", GPGAdvantage(), loop_gpg),
    ("gpg_valid", GPGAdvantage(alpha="valid_samples"), lambda b: loop_gpg(b, "valid_samples")),
    ("passk2", PassKAdvantage(k=2), lambda b: loop_passk(b, 2)),
    ("passk3", PassKAdvantage(k=3), lambda b: loop_passk(b, 3)),
])
def test_per_sample_estimators_match_their_loop_version(seed, name, estimator, reference):
    batch = random_batch(seed)
    got = per_sample_of(estimator(batch), batch)
    assert got.tolist() == pytest.approx(reference(batch), abs=1e-5)
    assert (got[:8] == 0).all()  # the all-correct and all-wrong groups: exactly 0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_reinforce_pp_matches_its_loop_version(seed, gamma):
    batch = random_batch(seed)
    got = ReinforcePPAdvantage(gamma=gamma)(batch)
    assert got.tolist() == [pytest.approx(row, abs=1e-5) for row in loop_reinforce_pp(batch, gamma, 1e-8)]
    assert (got[batch.loss_mask == 0] == 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_pp_baseline_matches_its_loop_version(seed):
    batch = random_batch(seed)
    got = ReinforcePPBaselineAdvantage()(batch)
    assert got.tolist() == [pytest.approx(row, abs=1e-5) for row in loop_reinforce_pp_baseline(batch, 1e-8)]


def test_hand_computed_groups():
    # RLOO: [1, 0, 0, 0] -> 1 - 0 and 0 - 1/3 | [1, 0.5] -> +-0.5
    batch = fake_batch([1, 0, 0, 0, 1, 0.5], [0, 0, 0, 0, 1, 1], [[1, 1]] * 6)
    assert per_sample_of(RLOOAdvantage()(batch), batch).tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3, 0.5, -0.5])
    # OPO: lengths 2 and 6 -> baseline (2 * 1 + 6 * 0) / 8 = 0.25
    batch = fake_batch([1, 0], [0, 0], [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert per_sample_of(OPOAdvantage()(batch), batch).tolist() == pytest.approx([0.75, -0.25])
    # GPG: 5 non-zero rewards of 8 -> alpha 8/5; the all-1 group stays 0
    batch = fake_batch([1, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1], [[1]] * 8)
    assert per_sample_of(GPGAdvantage()(batch), batch).tolist() == pytest.approx([1.2, -0.4, -0.4, -0.4, 0, 0, 0, 0])
    # GPG, the paper's alpha: 4 of 8 samples in groups with unequal rewards -> alpha 2
    assert per_sample_of(GPGAdvantage(alpha="valid_samples")(batch), batch).tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0])
    # low accuracy, [1, 0, 0, 0] and [0, 0, 0, 0]: verl's alpha 8/1 = 8, the paper's 8/4 = 2 (4x smaller)
    batch = fake_batch([1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1], [[1]] * 8)
    assert per_sample_of(GPGAdvantage()(batch), batch)[:4].tolist() == pytest.approx([6, -2, -2, -2])
    assert per_sample_of(GPGAdvantage(alpha="valid_samples")(batch), batch)[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    # pass@2 of 1 correct in 4: R = 1 - C(3,2)/C(4,2) = 0.5, sigma 0.5; correct (1 - R)/sigma = 1,
    # wrong (1 - R - C(2,1)/C(3,1))/sigma = -1/3. pass@3 of 2 correct in 4: every 3-subset passes -> 0.
    batch = fake_batch([1, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1], [[1]] * 8)
    assert per_sample_of(PassKAdvantage(k=2)(batch), batch)[:4].tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3])
    assert (PassKAdvantage(k=3)(batch)[4:] == 0).all()
    # REINFORCE++, gamma 0.5: returns [0.5, 1] and [0] -> mean 0.5, unbiased std 0.5 -> [0, 1], [-1]
    batch = fake_batch([1, 0], [0, 0], [[1, 1], [1, 0]])
    assert ReinforcePPAdvantage(gamma=0.5)(batch).tolist() == [pytest.approx([0, 1], abs=1e-6), pytest.approx([-1, 0], abs=1e-6)]


def test_pass_at_1_is_grpo_with_the_population_std():
    batch = random_batch(3)
    passk = per_sample_of(PassKAdvantage(k=1)(fake_batch(batch.correct.float().tolist(), batch.group_ids.tolist(), batch.loss_mask.tolist())), batch)
    correct = batch.correct.float().view(5, 4)
    pop_std = correct.std(-1, unbiased=False).repeat_interleave(4)
    expected = torch.where(pop_std > 0, (correct - correct.mean(-1, keepdim=True)).flatten() / pop_std.clamp(min=1e-12), 0.0)
    assert passk.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert (passk != 0).any()


@pytest.mark.parametrize("value", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("name", ["rloo", "opo", "gpg", "passk"])
def test_all_equal_group_is_exactly_zero(name, value):
    batch = fake_batch([value] * 4 + [1, 0, 0, 1], [0] * 4 + [1] * 4, [[1, 1, 1, 0, 0, 0, 0]] * 8)
    adv = ESTIMATORS[name](**({"k": 2} if name == "passk" else {}))(batch)
    assert (adv[:4] == 0).all() and adv[4:].abs().max() > 0


def test_reinforce_pp_does_not_zero_all_equal_groups():
    """Documented: no group baseline (or a batch-mean shift after it), so equal rewards still get (x - mean) / std."""
    batch = fake_batch([1, 1, 1, 0], [0, 0, 1, 1], [[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]])  # token mean != 0
    for estimator in (ReinforcePPAdvantage(), ReinforcePPBaselineAdvantage()):
        adv = estimator(batch)
        assert (adv[:2][batch.loss_mask[:2] == 1] != 0).all() and (adv[batch.loss_mask == 0] == 0).all()


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_zero_outside_the_loss_mask_and_built_from_its_yaml(name):
    batch = make_batch([["12+34=46;46+5=51#51", "1#1", "12+34=46;46+5=52#52", "3#3"]],
                       prefixes=[["12+34=46;", "", "", "12+34=46;"]], loss_on_guidance=False)
    with_rewards(batch, [1.0, 0.0, 0.0, 0.0])
    estimator = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert type(estimator) is ESTIMATORS[name]
    if name == "passk":
        estimator = PassKAdvantage(k=2)
    adv = estimator(batch)
    assert adv.shape == batch.loss_mask.shape
    assert (adv[batch.loss_mask == 0] == 0).all() and (adv[batch.loss_mask == 1] != 0).any()


@pytest.mark.parametrize("build, message", [
    (lambda: GRPOAdvantage(eps=-1), "advantage.eps must be a number > 0, got -1"),
    (lambda: GRPOAdvantage(eps=0), "advantage.eps must be a number > 0, got 0"),
    (lambda: ReinforcePPAdvantage(gamma=1.5), "advantage.gamma must be a number >= 0 and <= 1, got 1.5"),
    (lambda: ReinforcePPAdvantage(eps=0), "advantage.eps"),
    (lambda: ReinforcePPBaselineAdvantage(eps="x"), "advantage.eps"),
    (lambda: PassKAdvantage(k=0), "advantage.k must be an integer >= 1, got 0"),
    (lambda: PassKAdvantage(k=None), "advantage.k"),
    (lambda: GPGAdvantage(alpha="batch"), r"advantage.alpha must be one of nonzero_rewards \| valid_samples, got 'batch'"),
])
def test_bad_options_name_the_key(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_batches_are_clear_errors():
    with pytest.raises(ValueError, match="advantage.k = 5 must be less than a group's 4 samples"):
        PassKAdvantage(k=5)(fake_batch([1, 0, 0, 0], [0] * 4, [[1]] * 4))
    with pytest.raises(ValueError, match=r"advantage.k = 4 must be less than a group's 4 samples \(rollout.num_generations\)"):
        PassKAdvantage(k=4)(fake_batch([1, 0, 0, 0], [0] * 4, [[1]] * 4))  # k = n: sigma 0 in every group
    with pytest.raises(ValueError, match="advantage=rloo needs at least 2 samples per group"):
        RLOOAdvantage()(fake_batch([1, 0, 0], [0, 0, 1], [[1]] * 3))
    with pytest.raises(ValueError, match="needs batch.rewards"):
        OPOAdvantage()(SimpleNamespace(rewards=None))
