"""The composition matrix of the GRPO family: every advantage x every loss x {guidance none, adaptive} x {SGPO on
top or not}, composed with Hydra the way a user asks for it, each cell one real training step of the embedded
model. The config groups are independent, so each (advantage, guidance) and each loss is composed once; the
module is built once per guidance and one fit runs the cells as consecutive steps, swapping the plugins."""

import math

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from rlvr.train import build_module, build_trainer

ADVANTAGES = ["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "opo", "gpg", "passk"]
SGPO_BASES = ["grpo", "rloo", "opo", "gpg"]  # the estimators SGPO can build on (see SGPOAdvantage.base)
LOSSES = ["ppo_clip", "gspo", "cispo", "sapo", "gmpo", "clip_cov", "kl_cov"]
# 2-term sums fit in 20 tokens: the embedded model solves some, so groups carry a signal (6 tokens solved none).
SMALL = ["algorithm.prompts_per_step=1", "rollout.num_generations=4", "rollout.max_new_tokens=20", "data.max_terms=2", "data.train_size=40",
         "data.val_size=4", "val_every=1000", "export_policy=false", "seed=0"]


def composed(*overrides):
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        return compose("train", overrides=[*SMALL, *overrides])


class Cells(pl.Callback):
    """Before step i: cell i's advantage and loss; after it: that step's logged loss, share of groups with a
    non-zero advantage and gradient norm."""

    def __init__(self, cells):
        self.cells, self.losses, self.signal, self.grad_norms = cells, [], [], []

    def on_train_batch_start(self, trainer, module, batch, index):
        _, module.advantage, module.loss = self.cells[index]

    def on_train_batch_end(self, trainer, module, outputs, batch, index):
        metrics = trainer.callback_metrics
        self.losses.append(float(metrics["train/loss"]))
        self.signal.append(float(metrics["train/signal_frac"]))
        self.grad_norms.append(float(metrics["train/grad_norm"]))


@pytest.mark.parametrize("guidance", ["none", "adaptive"])
def test_every_advantage_loss_and_sgpo_take_a_training_step(tmp_path, guidance):
    # passk needs k < the group's 4 samples
    advantages = {name: composed(f"advantage={name}", f"guidance={guidance}", *(["advantage.k=2"] if name == "passk" else [])).advantage
                  for name in ADVANTAGES}
    advantages.update({f"sgpo+{base}": composed("advantage=sgpo", f"advantage.base={base}", f"guidance={guidance}").advantage
                       for base in SGPO_BASES})
    losses = {name: instantiate(composed(f"loss={name}").loss) for name in LOSSES}
    built = {name: instantiate(node) for name, node in advantages.items()}
    cells = [(f"{a}/{l}", built[a], losses[l]) for a in built for l in losses]

    cfg = composed(f"guidance={guidance}", f"max_steps={len(cells)}")
    module = build_module(cfg)
    record = Cells(cells)
    trainer = build_trainer(cfg, tmp_path, 1, callbacks=[record])
    trainer.fit(module)
    assert trainer.global_step == len(cells) == len(record.losses) == 11 * 7
    bad = [name for (name, _, _), loss in zip(cells, record.losses) if not math.isfinite(loss)]
    assert not bad and trainer.callback_metrics["train/skipped_updates"] == 0
    # Not a matrix of all-zero advantages: cells with a signal exist, and each of them moves the policy.
    moving = [name for (name, _, _), signal in zip(cells, record.signal) if signal > 0]
    still = [name for (name, _, _), signal, norm in zip(cells, record.signal, record.grad_norms) if signal > 0 and norm == 0]
    print(f"{len(moving)} of {len(cells)} cells with a non-zero advantage")
    assert len(moving) >= len(cells) // 4 and not still
    assert "sgpo/graded" in trainer.callback_metrics
    if guidance == "adaptive":
        assert "guidance/length" in trainer.callback_metrics


@pytest.mark.parametrize("base", sorted(set(ADVANTAGES) - set(SGPO_BASES)))
def test_sgpo_on_an_estimator_it_cannot_build_on_is_a_clear_error(base):
    node = composed("advantage=sgpo", f"advantage.base={base}").advantage
    with pytest.raises(Exception, match=f"advantage.base must be one of grpo \\| rloo \\| opo \\| gpg, got '{base}'"):
        instantiate(node)
