"""The module's update, in process, on a hand-built roll-out batch: it equals a plain PyTorch PPO step,
micro-batching changes memory and not the result, and mini-batches take that many optimizer steps."""

import copy

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from rlvr.batch import build_rollout_batch
from rlvr.data.arithmetic import make_example
from rlvr.guidance.base import GuidancePlan
from rlvr.logprobs import completion_logits, token_logprobs
from rlvr.rollout.base import Generation
from rlvr.train import build_module, build_trainer

COMPLETIONS = [  # 2 prompts x 4 roll-outs: mixed groups, so GRPO's advantages are not all zero
    ["12+34=46;46+5=51#51", "12+34=46;46+5=50#50", "12+34=47;47+5=52#52", "12+34=46;46+5=51#51"],
    ["7+8=15;15+9=24#24", "7+8=15;15+9=23#23", "7+8=16#16", "7+8=15;15+9=25#25"],
]
TERMS = [[12, 34, 5], [7, 8, 9]]


def compose_run(*overrides):
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        return compose("train", overrides=[
            "algorithm.prompts_per_step=2", "rollout.num_generations=4", "data.train_size=50", "data.val_size=4",
            "max_steps=1", "val_every=100", "export_policy=false", *overrides,
        ])


def hand_built_batch(tokenizer):
    examples = [make_example(t, f"ex{g}") for g, t in enumerate(TERMS)]
    prompt_ids = [tokenizer(examples[g].prompt, add_special_tokens=False)["input_ids"] for g in range(2) for _ in range(4)]
    generations = [Generation(tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id], True)
                   for group in COMPLETIONS for c in group]
    plan = GuidancePlan(prefix_ids=[[] for _ in range(8)], guided=[False] * 8, length=0.0)
    return build_rollout_batch(examples, 4, prompt_ids, plan, generations, tokenizer, 64, loss_on_guidance=True, mask_truncated=False)


def module_on_hand_batch(*overrides):
    """(config, module whose every roll-out is the hand-built batch, a copy of its policy before training)."""
    cfg = compose_run(*overrides)
    module = build_module(cfg)
    before = copy.deepcopy(module.policy)
    module.roll_out = lambda examples: hand_built_batch(module.tokenizer)
    return cfg, module, before


def fit_on_hand_batch(tmp_path, *overrides):
    """(weights before, weights after, module, the config) for one training step on the hand-built batch."""
    cfg, module, before = module_on_hand_batch(*overrides)
    trainer = build_trainer(cfg, tmp_path, module.algorithm.optimizer_steps_per_rollout)
    trainer.fit(module)
    return before, module.policy, module, cfg, trainer


def plain_ppo_step(policy, cfg, tokenizer):
    """One exactly on-policy PPO-clip step written out by hand: ratio 1, GRPO advantages, token mean."""
    batch = hand_built_batch(tokenizer)
    correct = torch.tensor([c.endswith(f"#{sum(TERMS[g])}") for g, group in enumerate(COMPLETIONS) for c in group]).float()
    groups = correct.view(2, 4)
    advantages = ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-6)).view(-1)
    logprobs = token_logprobs(completion_logits(policy, batch), batch.completion_ids)
    mask = batch.loss_mask.float()
    ratio = torch.exp(logprobs - logprobs.detach())
    loss = (-advantages[:, None] * ratio * mask).sum() / mask.sum()
    optimizer = instantiate(cfg.optimizer)(list(policy.parameters()))
    instantiate(cfg.scheduler)(optimizer, total_steps=cfg.max_steps)  # sets the warm-up's first lr
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.algorithm.max_grad_norm)
    optimizer.step()
    return policy


def assert_same_weights(a, b, atol):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(x, y, atol=atol, rtol=0), name


def test_update_equals_a_plain_pytorch_ppo_step(tmp_path):
    before, after, module, cfg, _ = fit_on_hand_batch(tmp_path)
    moved = max((x - y).abs().max().item() for x, y in zip(before.parameters(), after.parameters()))
    assert moved > 5e-6  # Adam's first step moves weights by ~lr (1e-5 in warm-up): far above the tolerance
    expected = plain_ppo_step(before, cfg, module.tokenizer)
    assert_same_weights(after, expected, atol=1e-6)  # Adam magnifies float noise in near-zero gradients


def clipped_gradients(monkeypatch) -> list:
    """Filled with the policy's gradient at each clipping point (all micro-batches accumulated), as one vector."""
    seen, clip = [], torch.nn.utils.clip_grad_norm_

    def capture(parameters, *args, **kwargs):
        parameters = list(parameters)
        seen.append(torch.cat([p.grad.flatten() for p in parameters]))
        return clip(parameters, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", capture)
    return seen


def update_gradient(tmp_path, monkeypatch, *overrides):
    """The policy's gradient at the step's clipping point, as one vector."""
    seen = clipped_gradients(monkeypatch)
    fit_on_hand_batch(tmp_path, *overrides)
    return seen[0]


@pytest.mark.parametrize("overrides", [
    ("algorithm.micro_batch_size=3",),  # splits groups: 3 + 3 + 2 samples
    ("algorithm.max_tokens_per_micro_batch=60",),  # by padded tokens, each micro-batch at its own width
    ("algorithm.shared_prefix=false", "algorithm.micro_batch_size=3"),
    ("algorithm.shared_prefix=false", "algorithm.max_tokens_per_micro_batch=60"),
    ("algorithm.shared_prefix=true",),
])
def test_micro_batches_and_shared_prefix_give_the_same_gradient(tmp_path, monkeypatch, overrides):
    plain = update_gradient(tmp_path / "plain", monkeypatch, "algorithm.shared_prefix=false")
    other = update_gradient(tmp_path / "other", monkeypatch, *overrides)
    assert plain.norm() > 0
    assert (other - plain).norm() / plain.norm() < 1e-5


@pytest.fixture(scope="module")
def off_policy_update():
    """(module, hand-built batch with advantages and perturbed old log-probs, gradient of module.update) on one
    module built once: each loss x aggregation swaps only the loss plugin and the micro-batch split."""
    import dataclasses

    from rlvr.logprobs import completion_logprobs

    cfg, module, _ = module_on_hand_batch("algorithm.shared_prefix=false")
    batch = hand_built_batch(module.tokenizer)
    batch.rewards, batch.correct, _ = module.reward(batch.completion_texts, batch.examples)
    batch.advantages = module.advantage(batch)
    with torch.no_grad():  # ratios spread around 1, so clipping, gates and dual-clip all take part
        current, _ = completion_logprobs(module.policy, batch)
        batch.old_logprobs = current + 0.3 * torch.randn(current.shape, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(module.policy.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    module.optimizers, module.lr_schedulers = lambda: optimizer, lambda: scheduler
    module.manual_backward = lambda loss: loss.backward()

    def gradient(loss_node, monkeypatch, **split):
        module.loss = instantiate(loss_node)
        module.algorithm = dataclasses.replace(module.algorithm, **split)
        seen = clipped_gradients(monkeypatch)
        module.update(batch)
        return seen[0]

    return cfg, gradient


FAMILY_LOSSES = ["ppo_clip", "gspo", "cispo", "sapo", "gmpo", "clip_cov", "kl_cov"]
AGGREGATIONS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
# What a loss computes over the whole batch it is called on (the micro-batch) is the one thing a split may change:
# top_entropy_quantile's quantile, Clip-Cov's and KL-Cov's covariance selection (their YAMLs say so;
# tests/test_family_losses.py tests that rule). Here they are set so that nothing is selected (or, for KL-Cov,
# so that the selected penalty is 0), and the rest of each loss must not depend on the split.
POPULATION_FREE = {"clip_cov": {"clip_cov_lb": 1e6, "clip_cov_ub": 1e7}, "kl_cov": {"kl_cov_coef": 0.0}}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("loss", FAMILY_LOSSES)
def test_every_loss_and_aggregation_gives_the_same_gradient_in_micro_batches(off_policy_update, monkeypatch, loss, aggregation):
    cfg, gradient = off_policy_update
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        node = compose("train", overrides=[f"loss={loss}", f"loss.aggregation={aggregation}"]).loss
    node.update(POPULATION_FREE.get(loss, {}))
    whole = gradient(node, monkeypatch, micro_batch_size=None, max_tokens_per_micro_batch=None)
    assert whole.norm() > 0
    for split in ({"micro_batch_size": 3}, {"max_tokens_per_micro_batch": 60}):  # 3 + 3 + 2 samples (splits groups); by tokens
        parts = gradient(node, monkeypatch, **{"micro_batch_size": None, "max_tokens_per_micro_batch": None, **split})
        assert (parts - whole).norm() / whole.norm() < 1e-5, split


@pytest.mark.parametrize("loss", ["ppo_clip", "gspo"])
def test_mini_batches_take_that_many_optimizer_steps(tmp_path, loss):
    _, _, module, _, trainer = fit_on_hand_batch(tmp_path, "algorithm.mini_batches=2", "algorithm.ppo_epochs=2", f"loss={loss}")
    assert trainer.global_step == 4  # Lightning counts optimizer steps
    assert module.lr_schedulers().last_epoch == 4


class NaNOnce:
    """Wraps a loss plugin: its first `times` calls return NaN (a too-large lr's first symptom)."""

    def __init__(self, loss, times):
        self.loss, self.times = loss, times

    def __getattr__(self, name):
        return getattr(self.loss, name)

    def __call__(self, *args, **kwargs):
        loss, stats = self.loss(*args, **kwargs)
        if self.times > 0:
            self.times -= 1
            loss = loss * float("nan")
        return loss, stats


def test_a_nan_update_is_skipped_counted_and_never_applied(tmp_path):
    cfg, module, before = module_on_hand_batch("max_steps=2")
    module.loss = NaNOnce(module.loss, times=1)
    trainer = build_trainer(cfg, tmp_path, 1)
    trainer.fit(module)
    # the NaN step was redrawn, so 2 applied updates came from 3 roll-out steps; the weights are finite and moved
    assert trainer.global_step == 2 and module.nonfinite.skipped == 1
    assert trainer.callback_metrics["train/skipped_updates"] == 1
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
    assert any(not torch.equal(x, y) for x, y in zip(before.parameters(), module.policy.parameters()))


def test_non_finite_updates_in_a_row_stop_the_run_with_the_step_and_lr(tmp_path):
    cfg, module, before = module_on_hand_batch("algorithm.max_nonfinite_updates=2")
    module.loss = NaNOnce(module.loss, times=5)
    with pytest.raises(FloatingPointError, match=r"2 updates in a row were skipped, the last for a non-finite loss and grad_norm at optimizer step 0 \(lr 1e-05\)"):
        build_trainer(cfg, tmp_path, 1).fit(module)
    assert_same_weights(before, module.policy, atol=0)


def test_non_finite_weights_are_never_checkpointed():
    module = build_module(compose_run())
    with torch.no_grad():
        next(module.policy.parameters())[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="no checkpoint is written"):
        module.on_save_checkpoint({})


def test_validation_counts_reward_errors(tmp_path):
    cfg, module, _ = module_on_hand_batch("reward.on_error=zero")

    def broken(completion, example):
        raise RuntimeError("checker crashed")

    module.reward.score = broken
    trainer = build_trainer(cfg, tmp_path, 1)
    trainer.validate(module, verbose=False)
    assert trainer.callback_metrics["val/reward_errors"] == 4 and trainer.callback_metrics["val/accuracy"] == 0


def test_a_checkpoint_that_cannot_be_written_stops_the_run(tmp_path, monkeypatch):
    from rlvr.state import AtomicCheckpointIO

    def full_disk(self, checkpoint, path, storage_options=None):
        raise OSError(f"No space left on device: {path}")

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_disk)
    from rlvr.checkpoints import StepCheckpoints

    cfg, module, _ = module_on_hand_batch("checkpoint_every=1")
    checkpoints = StepCheckpoints(tmp_path / "checkpoints", every=1, steps_per_rollout=1, config={})
    with pytest.raises(OSError, match="No space left on device: .*step000001.ckpt"):
        build_trainer(cfg, tmp_path, 1, callbacks=[checkpoints]).fit(module)


class Measured:
    """A reward that reports what it measured, as reward=code reports its sandbox time."""

    def __init__(self, reward):
        self.reward, self.last_metrics = reward, {}

    def __call__(self, texts, examples):
        self.last_metrics = {"reward/seconds": 0.25}
        return self.reward(texts, examples)


def test_what_the_reward_measured_is_logged_with_its_step(tmp_path):
    from rlvr.metrics import read_metrics

    cfg, module, _ = module_on_hand_batch()
    module.reward = Measured(module.reward)
    build_trainer(cfg, tmp_path, module.algorithm.optimizer_steps_per_rollout).fit(module)
    assert [row["reward/seconds"] for row in read_metrics(tmp_path) if "reward/seconds" in row] == [0.25]
