"""Hydra entry point: compose the config, build every plugin from its `_target_`, run Lightning.

    python -m rlvr.train                                   # embedded default: tiny model, arithmetic, CPU
    python -m rlvr.train advantage=sgpo judge=rule guidance=adaptive
    python -m rlvr.train -m algorithm.lr=1e-6,3e-6 seed=1,2
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from rlvr.module import AlgorithmConfig, RLVRModule

RLVR_TRAINER_KEYS = ("val_every", "checkpoint_every")
# Checkpoints hold the state after the step's update, which is what resuming needs.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def build_module(cfg: DictConfig) -> RLVRModule:
    algorithm = AlgorithmConfig(**OmegaConf.to_container(cfg.algorithm, resolve=True))
    return RLVRModule(
        model=instantiate(cfg.model),
        data=instantiate(cfg.data),
        rollout=instantiate(cfg.rollout),
        reward=instantiate(cfg.reward),
        advantage=instantiate(cfg.advantage),
        guidance=instantiate(cfg.guidance),
        algorithm=algorithm,
        max_steps=cfg.trainer.max_steps,
        seed=cfg.seed,
    )


def build_trainer(cfg: DictConfig, run_dir: Path, optimizer_steps_per_rollout: int) -> pl.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    val_every, checkpoint_every = (trainer_cfg.pop(k) for k in RLVR_TRAINER_KEYS)
    # Lightning counts optimizer steps in manual optimisation; rlvr's config counts roll-out steps.
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=checkpoint_every * optimizer_steps_per_rollout,
        save_top_k=-1,
        save_last=True,
    )
    return instantiate(
        trainer_cfg,
        max_steps=cfg.trainer.max_steps * optimizer_steps_per_rollout,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        logger=instantiate(cfg.logger, save_dir=str(run_dir)),
        callbacks=[checkpoint],
        default_root_dir=str(run_dir),
    )


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    trainer = build_trainer(cfg, run_dir, module.algo.optimizer_steps_per_rollout)
    if cfg.ckpt_path is None:
        trainer.validate(module, verbose=False)  # the "before" point of the val/accuracy curve (greedy: no RNG drawn)
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    if cfg.export_policy and trainer.is_global_zero:
        policy = module.policy
        if hasattr(policy, "merge_and_unload"):  # LoRA: fold the adapters in, so the folder is a plain HF model
            policy = policy.merge_and_unload()
        policy.save_pretrained(run_dir / "policy")
        module.tokenizer.save_pretrained(run_dir / "policy")
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    return metrics.get("val/accuracy")  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
