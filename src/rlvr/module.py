"""The training step: roll-out -> reward -> advantage -> clipped policy update. Every choice is a plugin."""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torchmetrics
from torch.utils.data import DataLoader, IterableDataset

from rlvr.advantages.base import AdvantageEstimator
from rlvr.batch import Example, RolloutBatch, build_rollout_batch
from rlvr.data.prompts import encode_prompt
from rlvr.data.stream import PromptStream
from rlvr.guidance.base import Guidance
from rlvr.losses import AGGREGATIONS, KL_ESTIMATORS, aggregation_weight, entropy_from_logits, policy_loss, token_logprobs
from rlvr.models.hf import HFModel
from rlvr.rewards.base import Reward
from rlvr.rollout.base import RolloutEngine


@dataclass
class KLConfig:
    beta: float = 0.0  # 0: no KL term and no reference model loaded
    estimator: str = "k3"


@dataclass
class AlgorithmConfig:
    prompts_per_step: int = 8
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # optimizer steps
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio at the last optimizer step
    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low: DAPO's clip-higher
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per epoch over the roll-out batch
    micro_batch_size: int | None = None  # gradient accumulation inside a mini-batch (memory only; same gradient)
    loss_aggregation: str = "token_mean"
    max_grad_norm: float | None = 1.0
    truncation: str = "keep"  # keep: score truncated completions as they are; mask: leave them out of the loss
    kl: KLConfig = field(default_factory=KLConfig)

    def __post_init__(self):
        if isinstance(self.kl, dict):
            self.kl = KLConfig(**self.kl)
        if self.truncation not in ("keep", "mask"):
            raise ValueError(f"algorithm.truncation must be keep | mask, got {self.truncation!r}")
        if self.ppo_epochs < 1 or self.mini_batches < 1:
            raise ValueError("algorithm.ppo_epochs and algorithm.mini_batches must be >= 1")
        # Checked here, not in the first loss after a long roll-out.
        if self.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"algorithm.loss_aggregation must be one of {' | '.join(AGGREGATIONS)}, got {self.loss_aggregation!r}")
        if self.kl.estimator not in KL_ESTIMATORS or self.kl.beta < 0:
            raise ValueError(f"algorithm.kl needs beta >= 0 and estimator in {' | '.join(KL_ESTIMATORS)}, got {self.kl}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"algorithm.clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low}, {self.clip_high}")

    @property
    def optimizer_steps_per_rollout(self) -> int:
        return self.ppo_epochs * self.mini_batches


class _Steps(IterableDataset):
    """Lightning wants a train loader; prompts come from the module's own stream, so this only counts."""

    def __iter__(self):
        step = 0
        while True:
            yield step
            step += 1


class RLVRModule(pl.LightningModule):
    def __init__(
        self,
        model: HFModel,
        data: Any,
        rollout: RolloutEngine,
        reward: Reward,
        advantage: AdvantageEstimator,
        guidance: Guidance,
        algorithm: AlgorithmConfig,
        max_steps: int,
        seed: int = 0,
        val_batch_size: int = 64,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.spec, self.data, self.engine, self.reward = model, data, rollout, reward
        self.advantage, self.guidance, self.algo = advantage, guidance, algorithm
        self.max_steps, self.seed, self.val_batch_size = max_steps, seed, val_batch_size
        self.tokenizer = model.load_tokenizer()
        self.policy = model.load_policy()
        # In a list, so the frozen copy is neither saved in checkpoints nor seen by the optimizer.
        self._reference = [model.load_reference()] if algorithm.kl.beta > 0 else []
        self.prompts = PromptStream(data.train(), algorithm.prompts_per_step, seed)
        self.val_examples = data.val()
        self.val_accuracy = torchmetrics.MeanMetric()
        self._pending_rng: dict[str, Any] | None = None
        self._shuffle = torch.Generator().manual_seed(seed)

    # ---- the training step -------------------------------------------------------------------
    def training_step(self, _step: int) -> None:
        timings: dict[str, float] = {}
        with _timed(timings, "rollout"):
            batch = self.rollout(self.prompts.next(self.global_rank, self.trainer.world_size)).to(self.device)
        with _timed(timings, "reward"):
            rewards, correct, reward_errors = self.reward(batch.completion_texts, batch.examples)
            batch.rewards, batch.correct = rewards.to(self.device), correct.to(self.device)
        with _timed(timings, "advantage"):
            batch.advantages = self.advantage(batch)
        with _timed(timings, "update"):
            batch.old_logprobs = self.sequence_logprobs(self.policy, batch)
            if self._reference:
                batch.ref_logprobs = self.sequence_logprobs(self._reference[0], batch)
            update_stats = self.update(batch)
        self.engine.update_weights(self.policy)
        self.guidance.observe(batch)
        self.log_step(batch, update_stats, timings, reward_errors)

    def rollout(self, examples: list[Example]) -> RolloutBatch:
        group = self.engine.num_generations
        plan = self.guidance.plan(examples, group, self.tokenizer)
        prompt_ids = [encode_prompt(e, self.data.prompt_template, self.data.use_chat_template, self.tokenizer) for e in examples]
        per_sample = [prompt_ids[i // group] for i in range(len(examples) * group)]
        generations = self.engine.generate([p + plan.prefix_ids[i] for i, p in enumerate(per_sample)])
        return build_rollout_batch(
            examples, group, per_sample, plan, generations, self.tokenizer, self.engine.max_new_tokens,
            loss_on_guidance=self.guidance.loss_on_guidance, mask_truncated=self.algo.truncation == "mask",
        )

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        n = batch.num_samples
        if self.algo.mini_batches > n:
            raise ValueError(f"algorithm.mini_batches={self.algo.mini_batches} exceeds the {n} samples of a roll-out batch")
        sums: dict[str, float] = {}
        count = 0
        for _epoch in range(self.algo.ppo_epochs):
            order = torch.randperm(n, generator=self._shuffle)
            for mini_index in order.tensor_split(self.algo.mini_batches):  # exactly the configured optimizer steps
                mini = batch.select(mini_index)
                micro_size = self.algo.micro_batch_size or len(mini_index)
                stats: dict[str, float] = {}
                for micro_index in torch.arange(len(mini_index)).split(micro_size):
                    micro = mini.select(micro_index)
                    loss, micro_stats = self.micro_loss(micro)
                    weight = aggregation_weight(micro.loss_mask, mini.loss_mask, self.algo.loss_aggregation)
                    self.manual_backward(loss * weight)
                    for key, value in micro_stats.items():
                        stats[key] = stats.get(key, 0.0) + float(value) * float(weight)
                    stats["loss"] = stats.get("loss", 0.0) + float(loss.detach()) * float(weight)
                stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                    self.policy.parameters(), self.algo.max_grad_norm or float("inf")
                ))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
        return {key: value / count for key, value in sums.items()}

    def micro_loss(self, micro: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.completion_logits(self.policy, micro)
        logprobs = token_logprobs(logits, micro.completion_ids, self.logprob_temperature)
        loss, stats = policy_loss(
            logprobs, micro.old_logprobs, micro.advantages, micro.loss_mask,
            clip_low=self.algo.clip_low, clip_high=self.algo.clip_high,
            aggregation=self.algo.loss_aggregation, norm_length=self.engine.max_new_tokens,
            ref_logprobs=micro.ref_logprobs, kl_beta=self.algo.kl.beta, kl_estimator=self.algo.kl.estimator,
        )
        mask = micro.loss_mask.float()
        with torch.no_grad():
            entropy = entropy_from_logits(logits, self.logprob_temperature)
            stats["entropy"] = (entropy * mask).sum() / mask.sum().clamp(min=1)
        return loss, stats

    # ---- log-probs of completions ------------------------------------------------------------
    @property
    def logprob_temperature(self) -> float:
        return self.engine.temperature or 1.0  # greedy roll-outs: score under the plain softmax

    def completion_logits(self, model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
        """Logits predicting each completion token: [N, C, V]."""
        completion_len = batch.completion_ids.shape[1]
        attention = batch.attention_mask
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at each prompt
        # Only the positions that predict completion tokens: no [N, prompt, vocab] logits.
        logits = model(input_ids=batch.input_ids, attention_mask=attention, position_ids=positions,
                       use_cache=False, logits_to_keep=completion_len + 1).logits
        return logits[:, :-1]

    @torch.no_grad()
    def sequence_logprobs(self, model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
        size = self.algo.micro_batch_size or batch.num_samples
        parts = []
        for index in torch.arange(batch.num_samples).split(size):
            part = batch.select(index)
            parts.append(token_logprobs(self.completion_logits(model, part), part.completion_ids, self.logprob_temperature))
        return torch.cat(parts)

    # ---- metrics -----------------------------------------------------------------------------
    def log_step(self, batch: RolloutBatch, update: dict[str, float], timings: dict[str, float], reward_errors: int) -> None:
        correct = batch.correct.float()
        group_correct = correct.view(batch.num_groups, batch.group_size)
        # Tokens the policy generated itself (copied guidance tokens are not roll-out work).
        lengths = (batch.token_mask.sum(-1) - batch.guidance_tokens).float()
        step_seconds = sum(timings.values())
        metrics = {
            "train/reward": batch.rewards.float().mean().item(),
            "train/accuracy": correct.mean().item(),
            "train/all_negative_frac": (group_correct.sum(-1) == 0).float().mean().item(),
            "train/all_positive_frac": (group_correct.sum(-1) == batch.group_size).float().mean().item(),
            "train/signal_frac": (batch.advantages.abs().sum(-1).view(batch.num_groups, -1).sum(-1) > 0).float().mean().item(),
            "train/completion_length": lengths.mean().item(),
            "train/truncated_frac": batch.truncated.float().mean().item(),
            "train/reward_errors": float(reward_errors),
            "train/lr": self.lr_schedulers().get_last_lr()[0],
            "train/prompts_consumed": float(self.prompts.position),
            "time/rollout_s": timings["rollout"],
            "time/update_s": timings["update"],
            "time/step_s": step_seconds,
            "time/generated_tokens_per_s": lengths.sum().item() / max(timings["rollout"], 1e-9),
            **{f"train/{k}": v for k, v in update.items()},
        }
        plugin_metrics = dict(batch.metrics)
        if "judge/seconds" in plugin_metrics:
            plugin_metrics["judge/share_of_step"] = plugin_metrics["judge/seconds"] / max(step_seconds, 1e-9)
        shown = {"train/reward", "train/accuracy"}
        self.log_dict({k: v for k, v in metrics.items() if k not in shown}, on_step=True, sync_dist=True)
        self.log_dict({k: metrics[k] for k in shown}, on_step=True, prog_bar=True, sync_dist=True)
        # Plugins may log a key on some ranks only (e.g. no guided sample there): reducing them key by key
        # across ranks could pair different keys, so they are logged as rank 0 sees them.
        self.log_dict(plugin_metrics, on_step=True, sync_dist=False, rank_zero_only=True)

    # ---- validation: greedy pass@1 on the held-out split ---------------------------------------
    def validation_step(self, examples: list[Example], _index: int) -> None:
        prompt_ids = [encode_prompt(e, self.data.prompt_template, self.data.use_chat_template, self.tokenizer) for e in examples]
        generations = self.engine.generate(prompt_ids, greedy=True)
        texts = self.tokenizer.batch_decode([g.token_ids for g in generations], skip_special_tokens=True)
        _, correct, _ = self.reward(texts, examples)
        self.val_accuracy.update(correct.float().to(self.device))
        self.log("val/accuracy", self.val_accuracy, prog_bar=True, batch_size=len(examples))

    # ---- Lightning plumbing ------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.engine.update_weights(self.policy, self.tokenizer)

    def on_fit_start(self) -> None:
        if str(self.trainer.precision).startswith("16"):
            raise ValueError("precision 16-mixed is not supported (its loss scaling would bypass gradient clipping): use bf16-mixed")
        for reference in self._reference:
            reference.to(self.device)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # examples are text; their tensors are made on the device by the step itself

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_examples, batch_size=self.val_batch_size, collate_fn=list, shuffle=False)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.algo.lr, weight_decay=self.algo.weight_decay, betas=tuple(self.algo.betas))
        total = max(1, self.max_steps * self.algo.optimizer_steps_per_rollout)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(self.algo.warmup_steps, total, self.algo.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def plugins(self) -> dict[str, Any]:
        return {"guidance": self.guidance, "advantage": self.advantage, "reward": self.reward, "rollout": self.engine}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rlvr"] = {
            "prompts": self.prompts.state_dict(),
            "plugins": {name: p.state_dict() for name, p in self.plugins().items() if hasattr(p, "state_dict")},
            "shuffle": self._shuffle.get_state(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["rlvr"]
        self.prompts.load_state_dict(state["prompts"])
        for name, plugin in self.plugins().items():
            if name in state["plugins"] and hasattr(plugin, "load_state_dict"):
                plugin.load_state_dict(state["plugins"][name])
        self._shuffle.set_state(state["shuffle"])
        self._pending_rng = state["rng"]  # applied when training starts: loading itself draws random numbers

    def on_train_start(self) -> None:
        if self._pending_rng is None:
            # Each rank samples its own roll-outs (rank 0 keeps the run's seed).
            if self.global_rank:
                torch.manual_seed(self.seed + self.global_rank)
            return
        torch.set_rng_state(self._pending_rng["torch"])
        random.setstate(self._pending_rng["python"])
        name, keys, *rest = self._pending_rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        if self._pending_rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending_rng["cuda"])
        self._pending_rng = None
        if self.global_rank:  # the checkpoint holds rank 0's generators: other ranks draw fresh, distinct streams
            torch.manual_seed(self.seed + self.global_rank + self.prompts.position)

    def state_dict(self, *args, **kwargs):
        # Only the policy's weights: metric states and frozen copies are not part of a checkpoint.
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if k.startswith("policy.")}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        result = super().load_state_dict(state_dict, strict=False, **kwargs)
        missing = [k for k in result.missing_keys if k.startswith("policy.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not match the policy: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        return result


def _numpy_state() -> tuple:
    # Plain Python types: Lightning loads checkpoints with weights_only=True, which refuses numpy arrays.
    name, keys, *rest = np.random.get_state()
    return (name, keys.tolist(), *(r.item() if isinstance(r, np.generic) else r for r in rest))


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@contextmanager
def _timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
