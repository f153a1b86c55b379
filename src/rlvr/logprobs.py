"""Log-probabilities of completion tokens under a model: the forward pass every update and KL term needs.

Shared-prefix forward (Prefix Grouper, arXiv 2506.05433): the G roll-outs of a prompt share it, so the prompt
runs once, its keys/values are repeated for its samples, and only the completions run per sample. Gradients
flow back through the repeated keys/values into the one prompt pass, so it is the plain forward's math,
not an approximation (tested against it: log-probs and gradients).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from rlvr.batch import RolloutBatch

log = logging.getLogger(__name__)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(token) under softmax(logits / temperature); logits [N, C, V] aligned with tokens [N, C]."""
    return _logprobs_of(_scaled(logits, temperature), tokens)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    return _entropy_of(_scaled(logits, temperature))


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature  # x / 1.0 is x: no [.., V] copy for nothing


def _logprobs_of(scaled: Tensor, tokens: Tensor) -> Tensor:
    return scaled.gather(-1, tokens[..., None]).squeeze(-1) - scaled.logsumexp(-1)


def _entropy_of(scaled: Tensor) -> Tensor:
    logp = scaled.log_softmax(-1)
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
    return _completion_states(model, batch, shared_prefix, hidden=False)


def completion_hidden(model: torch.nn.Module, batch: RolloutBatch, shared_prefix: bool = False) -> Tensor:
    """The final hidden states those logits are made from, [N, C, H]: the decoder runs, the lm_head does not."""
    return _completion_states(model, batch, shared_prefix, hidden=True)


def _completion_states(model: torch.nn.Module, batch: RolloutBatch, shared_prefix: bool, hidden: bool) -> Tensor:
    net = model.get_decoder() if hidden else model

    def run(keep: int, **inputs) -> Tensor:  # the last `keep` positions' hidden states or logits
        return net(**inputs).last_hidden_state[:, -keep:] if hidden else net(logits_to_keep=keep, **inputs).logits

    if shared_prefix:
        first, inverse = unique_rows(batch.prompt_ids, batch.prompt_mask)
        if len(first) < batch.num_samples:
            return _shared_prefix_states(net, run, batch, first, inverse)
    completion_len = batch.completion_ids.shape[1]
    attention = batch.attention_mask
    # Only the positions that predict completion tokens: no [N, prompt, vocab] logits.
    return run(completion_len + 1, input_ids=batch.input_ids, attention_mask=attention,
               position_ids=prompt_positions(attention), use_cache=False)[:, :-1]


def _shared_prefix_states(net: torch.nn.Module, run: Callable[..., Tensor], batch: RolloutBatch, first: Tensor, inverse: Tensor) -> Tensor:
    prompt_ids, prompt_mask = batch.prompt_ids[first], batch.prompt_mask[first]
    cache_name = cache_argument(net)
    prompt_cache = DynamicCache()  # filled in place by the prompt pass
    with _modules_set(net.modules(), gradient_checkpointing=False):  # a checkpointed layer would drop the cache it must fill
        prompt_last = run(1, input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions(prompt_mask),
                          use_cache=True, **{cache_name: prompt_cache})[:, -1]
    prefix = expanded_cache(prompt_cache, inverse, read_only=True)
    completion_len = batch.completion_ids.shape[1]
    # Positions continue from each prompt's real length (not its padded width): off by the padding, log-probs
    # would be wrong by nats, silently.
    positions = prompt_mask.sum(-1)[inverse, None] + torch.arange(completion_len, device=prompt_mask.device)
    attention = torch.cat([prompt_mask[inverse], batch.token_mask], dim=1)
    # Checkpointed layers may keep the cache (safe: it is only read). A flag above the layers (GPT-2's model drops
    # its cache when `gradient_checkpointing` is on) is cleared for the pass; the layers still checkpoint.
    above_layers = [m for m in net.modules() if hasattr(m, "gradient_checkpointing") and not isinstance(m, GradientCheckpointingLayer)]
    with _modules_set(net.modules(), _can_checkpoint_with_cache=True), _modules_set(above_layers, gradient_checkpointing=False):
        states = run(completion_len, input_ids=batch.completion_ids, attention_mask=attention, position_ids=positions,
                     use_cache=True, **{cache_name: prefix})
    # The prompt's last position predicts completion token 0.
    return torch.cat([prompt_last[inverse][:, None], states[:, :-1]], dim=1)


# Model types whose causal-LM forward is exactly lm_head(decoder(...).last_hidden_state), read in transformers 5.25:
# no logit scaling or soft-capping (Gemma, Cohere, Granite have them), so hidden states + head give the same logits.
PLAIN_HEAD_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3", "smollm3"})
_warned: set[str] = set()


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module that turns `model`'s final hidden states into logits (its lm_head; LoRA-wrapped if LoRA targets
    it), or None, with a one-line warning, where the logits may be more than that."""
    model_type = getattr(model.config, "model_type", None)
    # The type's own transformers class: remote code may report a known type with a forward of its own.
    plain = model_type in PLAIN_HEAD_TYPES and type(_base(model)).__module__.startswith("transformers.models.")
    head = model.get_output_embeddings() if plain else None
    if head is None and model_type not in _warned:
        _warned.add(model_type)
        why = "has no output embeddings" if plain else "is not known to be plain (transformers' own class of a listed type)"
        log.warning("chunked log-probs: the lm_head of model type %r %s, so its full logits are used "
                    "(algorithm.logprob_chunk_tokens has no effect)", model_type, why)
    return head


def completion_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, temperature: float = 1.0, shared_prefix: bool = False,
    chunk_tokens: int | None = None, entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """(log-probs [N, C] of the completion tokens, their entropy [N, C], detached; None without `entropy`) under
    softmax(logits / temperature). `chunk_tokens`: the lm_head runs on that many tokens at a time (head_logprobs);
    None, or a model whose head is not reachable: through the full [N, C, V] logits."""
    head = output_head(model) if chunk_tokens else None
    if head is not None:
        return head_logprobs(completion_hidden(model, batch, shared_prefix), head, batch.completion_ids, temperature, chunk_tokens, entropy)
    logits = completion_logits(model, batch, shared_prefix)
    with torch.no_grad():
        token_entropy = entropy_from_logits(logits, temperature) if entropy else None
    return token_logprobs(logits, batch.completion_ids, temperature), token_entropy


def head_logprobs(
    hidden: Tensor, head: torch.nn.Module, tokens: Tensor, temperature: float = 1.0, chunk_tokens: int = 1024, entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """(log-probs of `tokens` [...], entropy [...] or None) from final hidden states [..., H] and the output layer
    `head` (any module: plain, with a bias, LoRA-wrapped), `chunk_tokens` tokens at a time. Each chunk's logits are
    made in float32, reduced to two numbers per token and freed; under autograd each chunk is recomputed in the
    backward (activation checkpointing per chunk), so at most one chunk's [chunk, V] logits exist at once, forward
    and backward (the idea of verl's fused linear-entropy kernel and Liger's chunked losses, in plain torch)."""
    parts = []
    for h, t in zip(hidden.flatten(0, -2).split(chunk_tokens), tokens.reshape(-1).split(chunk_tokens)):
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_scores, head, h, t, temperature, entropy, use_reentrant=False, preserve_rng_state=False))  # the head draws no random numbers
        else:
            parts.append(_chunk_scores(head, h, t, temperature, entropy))
    logprobs = torch.cat([lp for lp, _ in parts]).view(tokens.shape)
    return logprobs, torch.cat([e for _, e in parts]).view(tokens.shape) if entropy else None


def _chunk_scores(head: torch.nn.Module, hidden: Tensor, tokens: Tensor, temperature: float, entropy: bool) -> tuple[Tensor, Tensor | None]:
    logits = _scaled(head(hidden), temperature)  # as token_logprobs, row by row (a chunk's matmul may round differently)
    logprobs = _logprobs_of(logits, tokens)
    with torch.no_grad():  # a statistic: nothing saved for the backward (and skipped by the recompute)
        return logprobs, _entropy_of(logits) if entropy else None


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
def _modules_set(modules: Iterable[torch.nn.Module], **flags: bool) -> Iterator[None]:
    """Set attributes for one forward pass on each of `modules` that has them (transformers' decoder layers and models)."""
    layers = [m for m in modules if all(hasattr(m, name) for name in flags)]
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
                   shared_prefix: bool = False, chunk_tokens: int | None = None) -> Tensor:
    """[N, C] token log-probs of the whole batch, one forward pass per micro-batch (indices into the batch);
    each micro-batch runs without its padding columns, and scores 0 where it has none."""
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=batch.completion_ids.device)
    for index in micro_batches:
        part = batch.select(index).trimmed()
        width = part.completion_ids.shape[1]
        out[index.to(out.device), :width] = completion_logprobs(model, part, temperature, shared_prefix, chunk_tokens, entropy=False)[0]
    return out
