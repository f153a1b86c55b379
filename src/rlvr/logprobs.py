"""Log-probabilities of completion tokens under a model: the forward pass every update and KL term needs.

Shared-prefix forward (Prefix Grouper, arXiv 2506.05433): the G roll-outs of a prompt share it, so the prompt
runs once, its keys/values are repeated for its samples, and only the completions run per sample. Gradients
flow back through the repeated keys/values into the one prompt pass, so it is the plain forward's math,
not an approximation (tested against it: log-probs and gradients).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

from rlvr.batch import RolloutBatch


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(token) under softmax(logits / temperature); logits [N, C, V] aligned with tokens [N, C]."""
    logits = logits.float() / temperature
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def prompt_positions(mask: Tensor) -> Tensor:
    """Position ids of left-padded rows: each row counts from its first real token (padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def unique_rows(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(index of one row per distinct (ids, mask) row, index of each row's representative) — the prompts to run
    once and how to repeat their results for every sample."""
    _, inverse = torch.unique(torch.cat([ids, mask], dim=1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), ids.shape[0], dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(ids.shape[0], device=ids.device), reduce="amin")
    return first, inverse


def completion_logits(model: torch.nn.Module, batch: RolloutBatch, shared_prefix: bool = False) -> Tensor:
    """Logits predicting each completion token: [N, C, V]. `shared_prefix`: each distinct prompt runs once."""
    if shared_prefix:
        first, inverse = unique_rows(batch.prompt_ids, batch.prompt_mask)
        if len(first) < batch.num_samples:
            return _shared_prefix_logits(model, batch, first, inverse)
    completion_len = batch.completion_ids.shape[1]
    attention = batch.attention_mask
    # Only the positions that predict completion tokens: no [N, prompt, vocab] logits.
    logits = model(input_ids=batch.input_ids, attention_mask=attention, position_ids=prompt_positions(attention),
                   use_cache=False, logits_to_keep=completion_len + 1).logits
    return logits[:, :-1]


def _shared_prefix_logits(model: torch.nn.Module, batch: RolloutBatch, first: Tensor, inverse: Tensor) -> Tensor:
    prompt_ids, prompt_mask = batch.prompt_ids[first], batch.prompt_mask[first]
    cache_name = cache_argument(model)
    prompt_cache = DynamicCache()  # filled in place by the prompt pass
    with _modules_set(model, gradient_checkpointing=False):  # a checkpointed layer would drop the cache it must fill
        prompt_out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions(prompt_mask),
                           use_cache=True, logits_to_keep=1, **{cache_name: prompt_cache})
    prefix = expanded_cache(prompt_cache, inverse, read_only=True)
    completion_len = batch.completion_ids.shape[1]
    # Positions continue from each prompt's real length (not its padded width): off by the padding, log-probs
    # would be wrong by nats, silently.
    positions = prompt_mask.sum(-1)[inverse, None] + torch.arange(completion_len, device=prompt_mask.device)
    attention = torch.cat([prompt_mask[inverse], batch.token_mask], dim=1)
    with _modules_set(model, _can_checkpoint_with_cache=True):  # safe: the prefix cache is only read
        logits = model(input_ids=batch.completion_ids, attention_mask=attention, position_ids=positions,
                       use_cache=True, logits_to_keep=completion_len, **{cache_name: prefix}).logits
    first_token_logits = prompt_out.logits[:, -1][inverse]  # the prompt's last position predicts completion token 0
    return torch.cat([first_token_logits[:, None], logits[:, :-1]], dim=1)


class _ReadOnlyLayer(DynamicLayer):
    """A prompt's keys/values, repeated for its samples. `update` returns them with the new tokens' and stores
    nothing: the completion pass cannot grow the shared cache, and a checkpointed layer's recompute reads
    exactly what the first pass read."""

    def __init__(self, keys: Tensor, values: Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def expanded_cache(cache: DynamicCache, index: Tensor, read_only: bool = False) -> DynamicCache:
    """A new cache whose row i is `cache`'s row index[i] (autograd flows back through the indexing)."""
    unsupported = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if unsupported:
        raise ValueError(f"shared-prefix forward needs full-attention key/value caches, this model has {sorted(unsupported)}: "
                         "set algorithm.shared_prefix=false and rollout.shared_prefix=false")
    expanded = DynamicCache()
    make = _ReadOnlyLayer if read_only else _copied_layer
    expanded.layers = [make(layer.keys[index], layer.values[index]) for layer in cache.layers]
    return expanded


def _copied_layer(keys: Tensor, values: Tensor) -> DynamicLayer:
    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    return layer


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: the wrapped model


def cache_argument(model: torch.nn.Module) -> str:
    """The key/value cache's keyword: `cache` in transformers 5.2x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(_base(model).forward).parameters else "past_key_values"


@contextmanager
def _modules_set(model: torch.nn.Module, **flags: bool) -> Iterator[None]:
    """Set attributes for one forward pass on every module that has them (transformers' decoder layers and models)."""
    layers = [m for m in model.modules() if all(hasattr(m, name) for name in flags)]
    saved = [{name: m.__dict__.get(name) for name in flags} for m in layers]
    for layer in layers:
        layer.__dict__.update(flags)
    try:
        yield
    finally:
        for layer, before in zip(layers, saved):
            for name, value in before.items():
                if value is None:
                    layer.__dict__.pop(name, None)  # back to the class attribute
                else:
                    layer.__dict__[name] = value


@torch.no_grad()
def batch_logprobs(model: torch.nn.Module, batch: RolloutBatch, temperature: float, micro_batches: list[Tensor],
                   shared_prefix: bool = False) -> Tensor:
    """[N, C] token log-probs of the whole batch, one forward pass per micro-batch (indices into the batch);
    each micro-batch runs without its padding columns, and scores 0 where it has none."""
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=batch.completion_ids.device)
    for index in micro_batches:
        part = batch.select(index).trimmed()
        width = part.completion_ids.shape[1]
        out[index.to(out.device), :width] = token_logprobs(completion_logits(model, part, shared_prefix), part.completion_ids, temperature)
    return out
