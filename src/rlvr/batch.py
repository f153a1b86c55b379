"""The data that flows through one training step: examples in, one roll-out batch through every plugin.

Shapes: N = prompts x group size samples, P = padded prompt length, C = padded completion length.
A plugin reads the fields it needs and fills the ones it makes; nobody reaches around the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from rlvr.models.hf import pad_token_id
from rlvr.tensors import pad_sequences


@dataclass(frozen=True)
class Example:
    """One problem: what the model sees, the answer that is checked, and the reference steps.

    `steps` is the ground-truth solution split into reasoning steps (empty: no reference, never guided);
    `step_separator` joins them back into solution text; `step_style` names how a response to this
    problem is split into steps (see `rlvr.data.steps.split_steps`).
    """

    id: str
    prompt: str
    answer: str
    steps: tuple[str, ...] = ()
    step_separator: str = "\n"
    step_style: str = "lines"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def solution(self) -> str:
        return self.step_separator.join(self.steps)

    def solution_prefix(self, num_steps: int) -> str:
        """The first `num_steps` reference steps, each followed by the separator, ready to continue from."""
        return "".join(step + self.step_separator for step in self.steps[:num_steps])


@dataclass
class RolloutBatch:
    examples: list[Example]  # [N], each prompt's example repeated for its group
    group_ids: Tensor  # [N] long, 0..num_groups-1, samples of a group are contiguous
    prompt_ids: Tensor  # [N, P] left-padded
    prompt_mask: Tensor  # [N, P] 1 on prompt tokens
    completion_ids: Tensor  # [N, C] right-padded; guidance tokens (if any) first
    token_mask: Tensor  # [N, C] 1 on completion tokens that exist (not padding)
    loss_mask: Tensor  # [N, C] 1 on tokens that are scored by the loss (see completion_loss_mask)
    completion_texts: list[str]  # [N] decoded completions, guidance included
    truncated: Tensor  # [N] bool: hit max_new_tokens without EOS
    guided: Tensor  # [N] bool
    guidance_tokens: Tensor  # [N] long: leading completion tokens copied from the reference
    rewards: Tensor | None = None  # [N] float
    correct: Tensor | None = None  # [N] bool
    first_error_step: Tensor | None = None  # [N] long, judge output: -1 no error found / not judged
    rts: Tensor | None = None  # [N] float, reasoning-trajectory score; nan where not judged
    old_logprobs: Tensor | None = None  # [N, C]
    ref_logprobs: Tensor | None = None  # [N, C]
    advantages: Tensor | None = None  # [N, C]
    metrics: dict[str, float] = field(default_factory=dict)
    tokenizer: Any = field(default=None, repr=False)  # decodes completion_ids; step -> token spans need it

    @property
    def num_samples(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def num_groups(self) -> int:
        return int(self.group_ids.max().item()) + 1 if self.num_samples else 0

    @property
    def group_size(self) -> int:
        return self.num_samples // max(self.num_groups, 1)

    @property
    def input_ids(self) -> Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.prompt_mask, self.token_mask], dim=1)

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)

    def select(self, index: Tensor) -> RolloutBatch:
        """The samples at `index` (a mini-batch); tensors indexed along dim 0, lists likewise."""
        out = {}
        positions = index.tolist()
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                out[f.name] = value[index.to(value.device)]
            elif isinstance(value, list):
                out[f.name] = [value[i] for i in positions]
        return replace(self, **out, metrics={})

    def trimmed(self) -> RolloutBatch:
        """The same samples without the padding columns none of them uses (a micro-batch of short samples
        runs at its own width, not the whole batch's)."""
        used_prompt = self.prompt_mask.any(0).nonzero()
        start = int(used_prompt[0]) if len(used_prompt) else self.prompt_mask.shape[1]
        used_completion = self.token_mask.any(0).nonzero()
        end = max(1, int(used_completion[-1]) + 1 if len(used_completion) else 1)  # keep one column, as build_rollout_batch
        out = {name: getattr(self, name)[:, start:] for name in PROMPT_FIELDS}
        out.update({name: getattr(self, name)[:, :end] for name in COMPLETION_FIELDS if getattr(self, name) is not None})
        return replace(self, **out)

    def micro_batches(self, max_samples: int | None, max_tokens: int | None, shared_prefix: bool) -> list[Tensor]:
        """Consecutive runs of samples (indices), each at most `max_samples` samples and `max_tokens` padded
        tokens (see micro_batch_tokens); a single sample over the budget runs alone."""
        prompt_len = self.prompt_mask.sum(-1).tolist()
        completion_len = self.token_mask.sum(-1).clamp(min=1).tolist()
        groups = self.group_ids.tolist()
        runs: list[list[int]] = [[]]
        for i in range(self.num_samples):
            candidate = runs[-1] + [i]
            cost = micro_batch_tokens([prompt_len[j] for j in candidate], [completion_len[j] for j in candidate],
                                      [groups[j] for j in candidate], shared_prefix)
            if runs[-1] and ((max_samples and len(candidate) > max_samples) or (max_tokens and cost > max_tokens)):
                runs.append([i])
            else:
                runs[-1] = candidate
        return [torch.tensor(run, dtype=torch.long) for run in runs if run]


PROMPT_FIELDS = ("prompt_ids", "prompt_mask")  # [N, P]
COMPLETION_FIELDS = ("completion_ids", "token_mask", "loss_mask", "old_logprobs", "ref_logprobs", "advantages")  # [N, C]


def micro_batch_tokens(prompt_lens: list[int], completion_lens: list[int], groups: list[int], shared_prefix: bool) -> int:
    """Padded tokens one forward pass over these samples runs: every sample at the longest prompt plus the
    longest completion; with a shared prefix, each group's prompt once plus every completion."""
    longest_prompt, longest_completion = max(prompt_lens), max(completion_lens)
    if shared_prefix:
        return len(set(groups)) * longest_prompt + len(completion_lens) * longest_completion
    return len(completion_lens) * (longest_prompt + longest_completion)


def completion_loss_mask(
    token_mask: Tensor,
    guidance_tokens: Tensor,
    truncated: Tensor,
    loss_on_guidance: bool,
    mask_truncated: bool,
) -> Tensor:
    """Which completion tokens the policy is scored on.

    Padding never counts. Guidance tokens count only with `loss_on_guidance` (the G2RPO-A authors'
    behaviour); otherwise they are context the policy never sampled. A truncated completion is dropped
    whole when `mask_truncated` (DAPO's overlong filtering), else it is scored like any other.
    """
    mask = token_mask.bool().clone()
    if not loss_on_guidance:
        positions = torch.arange(mask.shape[1], device=mask.device)
        mask &= positions[None, :] >= guidance_tokens[:, None]
    if mask_truncated:
        mask &= ~truncated.bool()[:, None]
    return mask.to(token_mask.dtype)


def build_rollout_batch(
    examples: list[Example],
    group_size: int,
    prompt_ids: list[list[int]],
    plan: Any,
    generations: list[Any],
    tokenizer: Any,
    max_new_tokens: int,
    loss_on_guidance: bool,
    mask_truncated: bool,
) -> RolloutBatch:
    """Pad prompts (left) and completions (right) into one batch.

    A guided sample's completion is its guidance prefix followed by what the model generated after it
    (up to `max_new_tokens` of its own, as in the G2RPO-A authors' code); not ended by EOS means truncated.
    `prompt_ids`, `plan.prefix_ids` and `generations` are per sample (N), `examples` per prompt.
    """
    n = len(examples) * group_size
    if not len(prompt_ids) == len(plan.prefix_ids) == len(generations) == n:
        raise ValueError(f"expected {n} samples, got {len(prompt_ids)} prompts, {len(plan.prefix_ids)} plans, {len(generations)} generations")
    completions, truncated, guidance_tokens = [], [], []
    for prefix, gen in zip(plan.prefix_ids, generations):
        if len(gen.token_ids) > max_new_tokens:
            raise ValueError(f"the engine returned {len(gen.token_ids)} tokens, more than max_new_tokens={max_new_tokens}")
        completions.append(list(prefix) + list(gen.token_ids))
        truncated.append(not gen.finished)
        guidance_tokens.append(len(prefix))
    pad = pad_token_id(tokenizer)
    prompt_tensor, prompt_mask = pad_sequences(prompt_ids, pad, side="left")
    # At least one column, so a batch of empty completions still has a [N, 1] (all-padding) shape.
    completion_tensor, token_mask = pad_sequences(completions, pad, side="right", width=max(1, max(len(c) for c in completions)))
    truncated_t = torch.tensor(truncated, dtype=torch.bool)
    guidance_t = torch.tensor(guidance_tokens, dtype=torch.long)
    loss_mask = completion_loss_mask(token_mask, guidance_t, truncated_t, loss_on_guidance, mask_truncated)
    if pad != tokenizer.eos_token_id:  # a pad token an engine returned inside a completion is no text of the policy's
        loss_mask = loss_mask * (completion_tensor != pad).to(loss_mask.dtype)
    return RolloutBatch(
        examples=[examples[i // group_size] for i in range(n)],
        group_ids=torch.arange(n) // group_size,
        prompt_ids=prompt_tensor,
        prompt_mask=prompt_mask,
        completion_ids=completion_tensor,
        token_mask=token_mask,
        loss_mask=loss_mask,
        completion_texts=tokenizer.batch_decode(completions, skip_special_tokens=True),
        truncated=truncated_t,
        guided=torch.tensor(plan.guided, dtype=torch.bool),
        guidance_tokens=guidance_t,
        metrics={"guidance/unguidable": float(plan.unguidable)} if plan.unguidable else {},
        tokenizer=tokenizer,
    )
