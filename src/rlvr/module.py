"""The training step: roll-out -> reward -> advantage -> policy-loss update. Every choice is a plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch.utils.data import DataLoader

from rlvr.advantages.base import AdvantageEstimator
from rlvr.algorithm import AlgorithmConfig, NonFiniteGuard
from rlvr.batch import Example, RolloutBatch, build_rollout_batch
from rlvr.data.checks import checked_splits
from rlvr.data.prompts import PromptEncoder
from rlvr.data.stream import PromptStream, StepCounter
from rlvr.guidance.base import Guidance
from rlvr.logprobs import batch_logprobs, completion_logprobs
from rlvr.losses.base import PolicyLoss
from rlvr.metrics import SHOWN, PeakMemory, plugin_metrics, step_metrics, timed
from rlvr.models.hf import HFModel
from rlvr.rewards.base import Reward
from rlvr.rollout.base import RolloutEngine
from rlvr.state import capture_rng, check_finite, load_plugin_states, plugin_states, restore_rng
from rlvr.tensors import masked_mean


class RLVRModule(pl.LightningModule):
    def __init__(
        self, model: HFModel, data: Any, rollout: RolloutEngine, reward: Reward, advantage: AdvantageEstimator,
        guidance: Guidance, loss: PolicyLoss, optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any],
        algorithm: AlgorithmConfig, max_steps: int, seed: int = 0, val_batch_size: int = 64,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.data, self.rollout_engine, self.reward, self.advantage = data, rollout, reward, advantage
        self.guidance, self.loss, self.algorithm, self.make_optimizer, self.make_scheduler = guidance, loss, algorithm, optimizer, scheduler
        self.max_steps, self.seed, self.val_batch_size = max_steps, seed, val_batch_size
        self.tokenizer = model.load_tokenizer()
        self.encode_prompts = PromptEncoder(data, self.tokenizer, bare=model.bare_prompts).batch
        # Before the weights load: a bad data set fails in seconds, not after minutes of loading a 7B model.
        train, self.val_examples = checked_splits(data, self.encode_prompts, guidance, reward, getattr(model, "context_length", lambda: None)(),
                                                   rollout.max_new_tokens, self.tokenizer)
        self.policy = model.load_policy()
        # In a list, so the frozen copy is neither saved in checkpoints nor seen by the optimizer.
        self._reference = [model.load_reference()] if loss.needs_reference else []
        self.prompts = PromptStream(train, algorithm.prompts_per_step, seed)
        self.val_accuracy = torchmetrics.MeanMetric()
        self._shuffle, self.nonfinite = torch.Generator().manual_seed(seed), NonFiniteGuard(algorithm.max_nonfinite_updates)
        self._pending_rng: dict[str, Any] | None = None

    # ---- the training step -------------------------------------------------------------------
    def training_step(self, _step: int) -> None:
        timings: dict[str, float] = {}
        self.peak_memory.reset()
        with timed(timings, "rollout"):
            batch = self.roll_out(self.prompts.next(self.global_rank, self.trainer.world_size)).to(self.device)
            batch.metrics.update(self.rollout_engine.last_metrics)
        with timed(timings, "reward"):
            rewards, correct, reward_errors = self.reward(batch.completion_texts, batch.examples)
            batch.rewards, batch.correct = rewards.to(self.device), correct.to(self.device)
            batch.metrics.update(self.reward.last_metrics)
        with timed(timings, "advantage"):
            batch.advantages = self.advantage(batch)
        with timed(timings, "update"):
            passes, algo = self.algorithm.micro_batches(batch), self.algorithm
            scoring = (self.logprob_temperature, passes, algo.shared_prefix, algo.logprob_chunk_tokens)
            if algo.needs_old_logprobs:  # else the update's own log-probs, detached, are the old ones
                batch.old_logprobs = batch_logprobs(self.policy, batch, *scoring)
            if self._reference:
                batch.ref_logprobs = batch_logprobs(self._reference[0], batch, *scoring)
            update_stats = self.update(batch)
        self.rollout_engine.update_weights(self.policy)
        self.guidance.observe(batch)
        self.log_step(batch, update_stats, timings, reward_errors)

    def roll_out(self, examples: list[Example]) -> RolloutBatch:
        group = self.rollout_engine.num_generations
        plan = self.guidance.plan(examples, group, self.tokenizer)
        prompt_ids = self.encode_prompts(examples)
        per_sample = [prompt_ids[i // group] for i in range(len(examples) * group)]
        generations = self.rollout_engine.generate([p + plan.prefix_ids[i] for i, p in enumerate(per_sample)])
        return build_rollout_batch(
            examples, group, per_sample, plan, generations, self.tokenizer, self.rollout_engine.max_new_tokens,
            loss_on_guidance=self.guidance.loss_on_guidance, mask_truncated=self.algorithm.mask_truncated,
        )

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """ppo_epochs x mini_batches optimizer steps on the batch; returns the statistics averaged over them."""
        optimizer, scheduler, algo = self.optimizers(), self.lr_schedulers(), self.algorithm
        totals: dict[str, float] = {}
        for _epoch in range(algo.ppo_epochs):
            order = torch.randperm(batch.num_samples, generator=self._shuffle)
            for mini_index in order.tensor_split(algo.mini_batches):  # exactly the configured optimizer steps
                mini = batch.select(mini_index.sort().values)  # in batch order: a group's samples share forward passes
                stats: dict[str, float] = {}
                for micro_index in algo.micro_batches(mini):
                    micro = mini.select(micro_index).trimmed()
                    loss, micro_stats = self.micro_loss(micro)
                    weight = self.loss.micro_batch_weight(micro.loss_mask, mini.loss_mask)
                    self.manual_backward(loss * weight)
                    for key, value in {"loss": loss.detach(), **micro_stats}.items():
                        stats[key] = stats.get(key, 0.0) + float(value) * weight
                stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), algo.max_grad_norm or float("inf")))
                if self.nonfinite.admits(stats, self.global_step, scheduler.get_last_lr()[0]):
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
        return {key: value / algo.optimizer_steps_per_rollout for key, value in totals.items()}

    def micro_loss(self, micro: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        algo = self.algorithm
        logprobs, entropy = completion_logprobs(self.policy, micro, self.logprob_temperature, algo.shared_prefix, algo.logprob_chunk_tokens)
        old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        loss, stats = self.loss(logprobs, old, micro.advantages, micro.loss_mask, micro.ref_logprobs, entropy=entropy)
        stats["entropy"] = masked_mean(entropy, micro.loss_mask)
        return loss, stats

    @property
    def logprob_temperature(self) -> float:
        return self.rollout_engine.temperature or 1.0  # greedy roll-outs: score under the plain softmax

    def log_step(self, batch: RolloutBatch, update: dict[str, float], timings: dict[str, float], reward_errors: int) -> None:
        metrics = step_metrics(batch, update, timings, **{"train/reward_errors": float(reward_errors),
            "train/lr": self.lr_schedulers().get_last_lr()[0], "train/prompts_consumed": float(self.prompts.position),
            "train/skipped_updates": float(self.nonfinite.skipped), "memory/peak_gb": self.peak_memory.gb()})
        self.log_dict({k: v for k, v in metrics.items() if k not in SHOWN}, on_step=True, sync_dist=True)
        self.log_dict({k: metrics[k] for k in SHOWN}, on_step=True, prog_bar=True, sync_dist=True)
        # Plugins may log a key on some ranks only (e.g. no guided sample there): reducing them key by key
        # across ranks could pair different keys, so they are logged as rank 0 sees them.
        self.log_dict(plugin_metrics(batch, metrics["time/step_s"]), on_step=True, sync_dist=False, rank_zero_only=True)

    # ---- validation: greedy pass@1 on the held-out split ---------------------------------------
    def validation_step(self, examples: list[Example], _index: int) -> None:
        generations = self.rollout_engine.generate(self.encode_prompts(examples), greedy=True)
        texts = self.tokenizer.batch_decode([g.token_ids for g in generations], skip_special_tokens=True)
        _, correct, errors = self.reward(texts, examples)
        self.val_accuracy.update(correct.float().to(self.device))
        self.log("val/accuracy", self.val_accuracy, prog_bar=True, batch_size=len(examples))
        self.log("val/reward_errors", float(errors), reduce_fx="sum", batch_size=len(examples))  # scored 0 by on_error=zero

    # ---- Lightning plumbing ------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.rollout_engine.update_weights(self.policy, self.tokenizer)

    def on_fit_start(self) -> None:
        self.peak_memory = PeakMemory(self.device)
        for reference in self._reference:
            reference.to(self.device)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # examples are text; their tensors are made on the device by the step itself

    def train_dataloader(self) -> DataLoader:
        return DataLoader(StepCounter(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_examples, batch_size=self.val_batch_size, collate_fn=list, shuffle=False)

    def configure_optimizers(self):
        optimizer = self.make_optimizer([p for p in self.policy.parameters() if p.requires_grad])
        scheduler = self.make_scheduler(optimizer, total_steps=max(1, self.max_steps * self.algorithm.optimizer_steps_per_rollout))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints: the policy's weights, the prompt stream, the plugins and every RNG -----------
    def plugins(self) -> dict[str, Any]:
        return {"guidance": self.guidance, "advantage": self.advantage, "reward": self.reward, "rollout": self.rollout_engine}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_finite(self.policy)
        checkpoint["rlvr"] = {"prompts": self.prompts.state_dict(), "plugins": plugin_states(self.plugins()),
                              "shuffle": self._shuffle.get_state(), "rng": capture_rng()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["rlvr"]
        self.prompts.load_state_dict(state["prompts"])
        load_plugin_states(self.plugins(), state["plugins"])
        self._shuffle.set_state(state["shuffle"])
        self._pending_rng = state["rng"]  # applied when training starts: loading itself draws random numbers

    def on_train_start(self) -> None:
        resumed = self._pending_rng is not None
        if resumed:
            restore_rng(self._pending_rng)
            self._pending_rng = None
        if self.global_rank:  # each rank samples its own roll-outs; a checkpoint holds rank 0's generators
            torch.manual_seed(self.seed + self.global_rank + (self.prompts.position if resumed else 0))

    def state_dict(self, *args, **kwargs):
        # Only the policy's weights: metric states and frozen copies are not part of a checkpoint.
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if k.startswith("policy.")}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        result = super().load_state_dict(state_dict, strict=False, **kwargs)
        missing = [k for k in result.missing_keys if k.startswith("policy.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not match the policy: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        return result

