"""The GRPO family's other policy losses (cispo, sapo, gmpo, clip_cov, kl_cov), ppo_clip's dual-clip and every
loss's top_entropy_quantile: hand-computed values and gradients, loop versions, the loss mask, bad options."""

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import rlvr.conf
from rlvr.losses.base import high_entropy_tokens, linear_quantile
from rlvr.losses.cispo import CISPOLoss
from rlvr.losses.cov import ClipCovLoss, KLCovLoss
from rlvr.losses.gmpo import GMPOLoss
from rlvr.losses.gspo import GSPOLoss
from rlvr.losses.ppo_clip import PPOClipLoss
from rlvr.losses.sapo import SAPOLoss

CONF = Path(rlvr.conf.__file__).parent / "loss"
LOSSES = {"ppo_clip": PPOClipLoss, "gspo": GSPOLoss, "cispo": CISPOLoss, "sapo": SAPOLoss, "gmpo": GMPOLoss,
          "clip_cov": ClipCovLoss, "kl_cov": KLCovLoss}
NO_COV_CLIP = {"clip_cov_lb": 1e6, "clip_cov_ub": 1e7}  # no token qualifies: Clip-Cov is then plain PPO-clip


def random_case(seed, n=4, c=6, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    logp = (torch.randn(n, c, generator=g) * 0.5 - 1.5).requires_grad_()
    old = logp.detach() + torch.randn(n, c, generator=g) * spread
    mask = (torch.rand(n, c, generator=g) > 0.25).long()
    mask[:, 0] = 1
    adv = torch.randn(n, generator=g)[:, None].expand(n, c).contiguous()
    return logp, old, adv, mask


def grad_of(loss, logp):
    (grad,) = torch.autograd.grad(loss, logp)
    return grad


# ---- hand-computed -----------------------------------------------------------------------------------------------
def test_dual_clip_bounds_negative_advantage_tokens():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[5.0, 2.0, 5.0]])).requires_grad_()
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    plugin = PPOClipLoss(clip_ratio_c=3.0)
    loss, stats = plugin(logp, old, adv, torch.ones(1, 3))
    # A<0, r=5: max(5, 0.8) = 5 > 3 -> 3 (no gradient) | A<0, r=2: 2 < 3 kept | A>0, r=5: clipped at -1.2
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3)
    assert stats["clip_frac_lower"].item() == pytest.approx(1 / 3)
    assert grad_of(loss, logp).tolist() == [pytest.approx([0.0, 2.0 / 3, 0.0])]
    assert PPOClipLoss()(logp, old, adv, torch.ones(1, 3))[0].item() == pytest.approx((5.0 + 2.0 - 1.2) / 3)  # off: null


def test_cispo_weights_are_constant_and_every_token_keeps_a_gradient():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[7.0, 0.5, 2.0]])).requires_grad_()
    adv = torch.tensor([[1.0, -2.0, 1.0]])
    loss, stats = CISPOLoss(clip_high=4.0)(logp, old, adv, torch.ones(1, 3))
    # weights: min(7, 5) = 5, 0.5 (no lower bound), 2; loss_t = -w A log pi; gradient -w A / 3 tokens
    expected = -(5 * 1 * math.log(7) + 0.5 * -2 * math.log(0.5) + 2 * 1 * math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert grad_of(loss, logp).tolist() == [pytest.approx([-5 / 3, 1 / 3, -2 / 3], rel=1e-6)]
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    # with a lower bound 1 - 0.2 the second weight becomes 0.8
    loss, _ = CISPOLoss(clip_high=4.0, clip_low=0.2)(logp, old, adv, torch.ones(1, 3))
    assert grad_of(loss, logp)[0, 1].item() == pytest.approx(2 * 0.8 / 3, rel=1e-6)


def test_sapo_gate_value_and_gradient():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.0, 1.5, 1.5]])).requires_grad_()
    adv = torch.tensor([[2.0, 1.0, -1.0]])
    plugin = SAPOLoss(tau_pos=1.0, tau_neg=2.0, aggregation="token_mean")
    loss, _ = plugin(logp, old, adv, torch.ones(1, 3))
    sig = lambda x: 1 / (1 + math.exp(-x))
    f = [sig(0) * 4, sig(0.5) * 4, sig(2 * 0.5) * 4 / 2]  # tau 1, 1, 2 (A <= 0)
    assert loss.item() == pytest.approx(-(f[0] * 2 + f[1] * 1 + f[2] * -1) / 3, rel=1e-6)
    # d f / d log pi = r * 4 sig'(tau (r - 1)) = r * 4 sig (1 - sig): 1 at r = 1, fading as r moves away
    d = [1.0, 1.5 * 4 * sig(0.5) * (1 - sig(0.5)), 1.5 * 4 * sig(1.0) * (1 - sig(1.0))]
    assert grad_of(loss, logp).tolist() == [pytest.approx([-d[0] * 2 / 3, -d[1] / 3, d[2] / 3], rel=1e-5)]


def test_gmpo_geometric_mean_clipped_in_log_space():
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, -0.2, 0.9], [0.6, 0.0, 0.0]]).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3])
    loss, stats = GMPOLoss(clip_low=0.4, clip_high=0.4)(logp, old, adv, mask)
    # seq 0 (A>0): log-ratios 0.1, -0.2, 0.9 -> min(x, clamp(x)) = 0.1, -0.2, 0.4 -> s = exp(0.3 / 3)
    # seq 1 (A<0): 0.6 -> -min(-0.6, -0.4) = 0.6 (pessimistic: not clipped) -> s = exp(0.6)
    s0, s1 = math.exp(0.1), math.exp(0.6)
    assert loss.item() == pytest.approx((-s0 + s1) / 2, rel=1e-6)
    # d/d logp: seq 0: -s0 / 3 on unclipped tokens, 0 on the clipped one; seq 1: +s1 on its token
    assert grad_of(loss, logp).tolist() == [pytest.approx([-s0 / 6, -s0 / 6, 0.0], rel=1e-6), pytest.approx([s1 / 2, 0, 0], rel=1e-6)]
    assert stats["clip_frac"].item() == pytest.approx(2 / 4)


def test_clip_cov_detaches_the_qualifying_tokens():
    # On-policy (r = 1, nothing PPO-clipped). cov_t = (A - mean A)(log pi - mean log pi) over the 4 scored tokens.
    logp = torch.tensor([[-0.5, -2.5], [-1.5, -1.5]]).requires_grad_()
    adv = torch.tensor([[2.0, 2.0], [0.0, 0.0]])
    mask = torch.ones(2, 2)
    # means: A 1, log pi -1.5 -> cov = [1 * 1, 1 * -1, -1 * 0, -1 * 0] = [1, -1, 0, 0]; only the first is in (0.5, 5)
    plugin = ClipCovLoss(clip_cov_ratio=0.5, clip_cov_lb=0.5, clip_cov_ub=5.0)  # budget 2 >= 1 candidate: deterministic
    loss, stats = plugin(logp, logp.detach(), adv, mask)
    assert loss.item() == pytest.approx((0 - 2 + 0 + 0) / 4)
    assert grad_of(loss, logp).tolist() == [[0.0, -0.5], [0.0, 0.0]]
    assert stats["cov_clip_frac"].item() == pytest.approx(0.25)


def test_clip_cov_draws_its_budget_at_random_among_candidates():
    torch.manual_seed(0)
    logp = torch.tensor([[-0.5, -0.5, -2.5, -2.5]]).requires_grad_()
    adv = torch.tensor([[2.0, 2.0, 0.0, 0.0]])
    # cov = [1, 1, 1, 1] (both factors flip sign together): 4 candidates, budget max(int(0.25 * 4), 1) = 1
    seen = set()
    for _ in range(20):
        loss, stats = ClipCovLoss(clip_cov_ratio=0.25, clip_cov_lb=0.5)(logp, logp.detach(), adv, torch.ones(1, 4))
        assert stats["cov_clip_frac"].item() == 0.25
        seen.add(tuple(grad_of(loss, logp)[0].eq(0).tolist()))
    assert {(True, False, True, True), (False, True, True, True)} <= seen  # each positive-A token was the one dropped


def test_kl_cov_penalises_the_top_covariance_tokens():
    old = torch.tensor([[-0.5, -2.5], [-1.5, -1.5]])
    logp = (old + torch.tensor([[0.2, 0.1], [0.0, -0.3]])).requires_grad_()
    adv = torch.tensor([[2.0, 2.0], [0.0, 0.0]])
    loss, stats = KLCovLoss(kl_cov_ratio=0.25, kl_cov_coef=0.5)(logp, old, adv, torch.ones(2, 2))
    # cov over current log pi (-0.3, -2.4, -1.5, -1.8; mean -1.5) and A (mean 1): [1.2, -0.9, 0, 0] -> top 1 is token 0
    r = [math.exp(0.2), math.exp(0.1)]
    assert loss.item() == pytest.approx((-2 * r[0] + 0.5 * 0.2 - 2 * r[1]) / 4, rel=1e-6)
    assert grad_of(loss, logp).tolist() == [pytest.approx([(-2 * r[0] + 0.5) / 4, -2 * r[1] / 4], rel=1e-6), [0.0, 0.0]]
    assert stats["cov_kl_frac"].item() == 0.25


# ---- loop versions -------------------------------------------------------------------------------------------------
def loop_token_mean(per_token, mask):
    terms = [per_token(i, t) for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t]]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cispo_and_sapo_match_their_loop_versions(seed):
    logp, old, adv, mask = random_case(seed, spread=1.0)

    def cispo(i, t):
        w = min(math.exp(float(logp[i, t].detach() - old[i, t])), 1.5)
        return -w * adv[i, t] * logp[i, t]

    def sapo(i, t):
        tau = 1.0 if adv[i, t] > 0 else 1.05
        return -torch.sigmoid(tau * (torch.exp(logp[i, t] - old[i, t]) - 1)) * 4 / tau * adv[i, t]

    for plugin, per_token in ((CISPOLoss(clip_high=0.5), cispo), (SAPOLoss(aggregation="token_mean"), sapo)):
        loss, _ = plugin(logp, old, adv, mask)
        expected = loop_token_mean(per_token, mask)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert torch.allclose(grad_of(loss, logp), grad_of(expected, logp), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gmpo_matches_its_sequence_level_loop_version(seed):
    """verl's geo_mean, one sequence at a time: mean advantage, clipped log-ratios, exp of their mean, mean over sequences."""
    logp, old, adv, mask = random_case(seed, spread=0.5)
    loss, _ = GMPOLoss(clip_low=0.3, clip_high=0.2)(logp, old, adv, mask)
    per_sequence = []
    for i in range(mask.shape[0]):
        tokens = [t for t in range(mask.shape[1]) if mask[i, t]]
        a = sum(float(adv[i, t]) for t in tokens) / len(tokens)
        sign = 1.0 if a > 0 else -1.0
        logs = [sign * torch.minimum(sign * (logp[i, t] - old[i, t]), sign * (logp[i, t] - old[i, t]).clamp(-0.3, 0.2)) for t in tokens]
        per_sequence.append(-a * torch.exp(sum(logs) / len(tokens)))
    expected = sum(per_sequence) / len(per_sequence)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    grad = grad_of(loss, logp)
    assert torch.allclose(grad, grad_of(expected, logp), atol=1e-6) and (grad != 0).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cov_losses_match_their_loop_versions(seed):
    logp, old, adv, mask = random_case(seed, spread=0.3)
    scored = [(i, t) for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t]]
    mean_a = sum(float(adv[p]) for p in scored) / len(scored)
    mean_l = sum(float(logp[p]) for p in scored) / len(scored)
    cov = {p: (float(adv[p]) - mean_a) * (float(logp[p]) - mean_l) for p in scored}
    # KL-Cov: the top max(int(0.2 n), 1) tokens by cov get + 0.7 |log r|
    top = sorted(scored, key=lambda p: -cov[p])[: max(int(0.2 * len(scored)), 1)]

    def kl_cov(i, t):
        log_r = logp[i, t] - old[i, t]
        return -adv[i, t] * torch.exp(log_r) + (0.7 * log_r.abs() if (i, t) in top else 0.0)

    loss, _ = KLCovLoss(kl_cov_ratio=0.2, kl_cov_coef=0.7)(logp, old, adv, mask)
    expected = loop_token_mean(kl_cov, mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(grad_of(loss, logp), grad_of(expected, logp), atol=1e-6)

    # Clip-Cov with a budget that covers every candidate (so the draw is not random): PPO-clip, candidates detached
    def ppo(i, t):
        r = torch.exp(logp[i, t] - old[i, t])
        return torch.maximum(-adv[i, t] * r, -adv[i, t] * r.clamp(0.8, 1.2))

    def in_clip(p):
        r = math.exp(float(logp[p] - old[p]))
        return -float(adv[p]) * min(max(r, 0.8), 1.2) > -float(adv[p]) * r

    candidates = {p for p in scored if 0.05 < cov[p] < 5.0 and not in_clip(p)}
    assert candidates  # the check is not vacuous
    loss, _ = ClipCovLoss(clip_cov_ratio=1.0, clip_cov_lb=0.05)(logp, old, adv, mask)
    expected = loop_token_mean(lambda i, t: 0.0 * ppo(i, t) if (i, t) in candidates else ppo(i, t), mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(grad_of(loss, logp), grad_of(expected, logp), atol=1e-6)


# ---- what every loss shares ------------------------------------------------------------------------------------------
def build(name, **options):
    return LOSSES[name](**({**NO_COV_CLIP, **options} if name == "clip_cov" else options))


@pytest.mark.parametrize("name", LOSSES)
def test_on_policy_every_loss_is_the_plain_policy_gradient(name):
    """At r = 1 (the first update on fresh roll-outs) every loss's gradient is -A_t grad log pi, token-averaged."""
    logp, _, adv, mask = random_case(3)
    loss, _ = build(name, aggregation="token_mean")(logp, logp.detach(), adv, mask)
    expected = -adv * mask / mask.sum()
    assert torch.allclose(grad_of(loss, logp), expected, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_unscored_positions_never_matter(name):
    """Garbage log-probs (padding: -inf, or huge) outside the loss mask change neither the loss nor the gradient."""
    logp, old, adv, mask = random_case(4, spread=0.1)
    plugin = build(name)
    clean, _ = plugin(logp, old, adv, mask)
    grad = grad_of(clean, logp)
    for garbage in (float("-inf"), 50.0):
        dirty_logp = logp.detach().masked_fill(mask == 0, garbage).requires_grad_()
        dirty_old = old.masked_fill(mask == 0, -garbage)
        loss, _ = plugin(dirty_logp, dirty_old, adv, mask)
        assert loss.item() == pytest.approx(clean.item(), rel=1e-6)
        dirty_grad = grad_of(loss, dirty_logp)
        assert torch.isfinite(dirty_grad).all() and torch.allclose(dirty_grad, grad, atol=1e-7)
        assert (dirty_grad[mask == 0] == 0).all()


def test_top_entropy_quantile_keeps_the_top_tokens_of_the_batch_it_sees():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    entropy = torch.tensor([[0.1, 2.0, 0.5], [3.0, 1.0, 9.9]])  # the masked 9.9 is no candidate
    plugin = PPOClipLoss(top_entropy_quantile=0.5)
    loss, stats = plugin(logp, logp.detach(), adv, mask, entropy=entropy)
    # scored entropies 0.1, 2.0, 0.5, 3.0, 1.0: the 0.5 quantile is 1.0 -> kept 2.0, 3.0, 1.0; the denominator stays 5
    assert loss.item() == pytest.approx((-1 + 1 + 1) / 5)
    assert grad_of(loss, logp).tolist() == [pytest.approx([0.0, -0.2, 0.0]), pytest.approx([0.2, 0.2, 0.0])]
    assert stats["entropy_kept_frac"].item() == pytest.approx(3 / 5)
    # rho = 0 keeps only the highest-entropy token; the KL term stays on every scored token
    ref = logp.detach() - 1.0
    loss, _ = PPOClipLoss(top_entropy_quantile=0.0, kl_beta=0.1, kl_estimator="k1")(logp, logp.detach(), adv, mask, ref, entropy=entropy)
    assert loss.item() == pytest.approx((1.0 + 0.1 * 5) / 5)
    with pytest.raises(ValueError, match="loss.top_entropy_quantile < 1 needs the policy's per-token entropy"):
        plugin(logp, logp.detach(), adv, mask)


def test_top_entropy_quantile_population_is_the_micro_batch():
    """The quantile is over the tokens of each call: split into micro-batches, each keeps its own top half."""
    logp = torch.zeros(2, 2, requires_grad=True)
    adv = torch.ones(2, 2)
    mask = torch.ones(2, 2)
    entropy = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    plugin = PPOClipLoss(top_entropy_quantile=0.5)
    whole, _ = plugin(logp, logp.detach(), adv, mask, entropy=entropy)  # keeps 3.0 and 4.0 (threshold 2.5)
    parts = sum(plugin(logp[i : i + 1], logp.detach()[i : i + 1], adv[i : i + 1], mask[i : i + 1], entropy=entropy[i : i + 1])[0]
                * plugin.micro_batch_weight(mask[i : i + 1], mask) for i in range(2))  # each row keeps its larger one
    assert grad_of(whole, logp).tolist() == [[0.0, 0.0], [-0.25, -0.25]]
    assert grad_of(parts, logp).tolist() == [[0.0, -0.25], [0.0, -0.25]]


@pytest.mark.parametrize("q", [0.0, 0.2, 0.37, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_linear_quantile_is_torch_quantile(n, q):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    assert linear_quantile(values, q).item() == pytest.approx(torch.quantile(values, q).item(), abs=1e-6)


def test_top_entropy_quantile_takes_micro_batches_above_torch_quantiles_limit():
    """torch.quantile raises above 2^24 elements; the sort-based rule does not. Position 0.5 * 2^24 = 2^23 exactly."""
    n = 2**24 + 1
    entropy = torch.arange(n, dtype=torch.float32)[None]
    keep = high_entropy_tokens(entropy, torch.ones(1, n, dtype=torch.bool), 0.5)
    assert int(keep.sum()) == 2**23 + 1 and not keep[0, 2**23 - 1] and keep[0, 2**23]


@pytest.mark.parametrize("name", LOSSES)
def test_yaml_builds_its_plugin_with_its_class_defaults(name):
    import inspect

    node = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), {"norm_length": 64})
    assert type(instantiate(node)) is LOSSES[name]
    own = {k: p.default for k, p in inspect.signature(LOSSES[name]).parameters.items() if k != "options"}
    assert {k: node[k] for k in own} == own  # the YAML states the class's defaults


@pytest.mark.parametrize("name, options, message", [
    ("ppo_clip", {"clip_ratio_c": 1.0}, "loss.clip_ratio_c must be a number > 1 or null, got 1.0"),
    ("ppo_clip", {"top_entropy_quantile": 1.5}, "loss.top_entropy_quantile must be a number >= 0 and <= 1, got 1.5"),
    ("gspo", {"norm_length": -1}, "loss.norm_length must be an integer >= 1 or null, got -1"),
    ("cispo", {"clip_high": -1}, "loss.clip_high"),
    ("cispo", {"clip_low": "x"}, "loss.clip_low"),
    ("sapo", {"tau_neg": 0}, "loss.tau_neg must be a number > 0, got 0"),
    ("sapo", {"tau_pos": None}, "loss.tau_pos"),
    ("gmpo", {"clip_low": -0.1}, "loss.clip_low"),
    ("clip_cov", {"clip_cov_ratio": 0}, "loss.clip_cov_ratio must be a number > 0 and <= 1, got 0"),
    ("clip_cov", {"clip_cov_ub": 0.5}, "loss.clip_cov_ub must be a number > 1, got 0.5"),
    ("clip_cov", {"clip_cov_lb": "x"}, "loss.clip_cov_lb"),
    ("kl_cov", {"kl_cov_ratio": -1}, "loss.kl_cov_ratio"),
    ("kl_cov", {"kl_cov_coef": -1}, "loss.kl_cov_coef must be a number >= 0, got -1"),
    ("kl_cov", {"aggregation": "sum"}, "loss.aggregation"),
])
def test_bad_options_name_the_key(name, options, message):
    with pytest.raises(ValueError, match=message):
        LOSSES[name](**options)
