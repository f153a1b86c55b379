"""Log-probabilities of completion tokens under a model: the forward pass every update and KL term needs."""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.batch import RolloutBatch


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(token) under softmax(logits / temperature); logits [N, C, V] aligned with tokens [N, C]."""
    logits = logits.float() / temperature
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def completion_logits(model: torch.nn.Module, batch: RolloutBatch) -> Tensor:
    """Logits predicting each completion token: [N, C, V]."""
    completion_len = batch.completion_ids.shape[1]
    attention = batch.attention_mask
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at each prompt
    # Only the positions that predict completion tokens: no [N, prompt, vocab] logits.
    logits = model(input_ids=batch.input_ids, attention_mask=attention, position_ids=positions,
                   use_cache=False, logits_to_keep=completion_len + 1).logits
    return logits[:, :-1]


@torch.no_grad()
def batch_logprobs(model: torch.nn.Module, batch: RolloutBatch, temperature: float, micro_batch_size: int | None = None) -> Tensor:
    """[N, C] token log-probs of the whole batch, `micro_batch_size` samples per forward pass (None: all)."""
    size = micro_batch_size or batch.num_samples
    parts = []
    for index in torch.arange(batch.num_samples).split(size):
        part = batch.select(index)
        parts.append(token_logprobs(completion_logits(model, part), part.completion_ids, temperature))
    return torch.cat(parts)
