"""Roll-outs with `transformers`' `generate`: batched, left-padded, KV cache, sampling from the policy itself."""

from __future__ import annotations

from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicCache, StaticCache

from rlvr.logprobs import cache_argument, expanded_cache, prompt_positions, unique_rows
from rlvr.models.hf import pad_token_id
from rlvr.options import check, choose
from rlvr.rollout.base import Generation, RolloutEngine
from rlvr.tensors import pad_sequences

DECODE_MODES = {name: name for name in ("auto", "eager", "static", "compiled")}


class HFEngine(RolloutEngine):
    """`shared_prefix`: identical prompts in a call (a group's G roll-outs) are prefilled once and their key/value
    cache repeated for each, instead of encoding each prompt G times (same tokens; tested).

    `decode`: how each new token's forward pass runs.
      eager     a growing key/value cache, plain PyTorch (one kernel launch per op per token).
      static    a preallocated key/value cache of fixed shape, not compiled (the compiled mode's numerics, for tests).
      compiled  the static cache and a `torch.compile`d decoding forward (CUDA graphs on a GPU: `reduce-overhead`).
                Shapes are bucketed so a run compiles a bounded number of graphs: rows are padded up to
                batch_size / 2^k (k <= 3) with copies of a prompt, and the cache length (prompt + max_new_tokens,
                rounded up to one of four steps per octave) only grows, from `max_cache_tokens` if set (then a run
                whose prompts fit compiles once per row bucket). The prompt prefill stays eager (its width varies freely).
                `compile_backend`: torch.compile's backend (`eager` traces without code generation: tests).
      auto      compiled on CUDA, eager elsewhere (on CPU, compiling does not pay: measured, README).
    After each call `last_metrics` holds `rollout/compiles`, the graphs compiled by this engine so far.
    """

    def __init__(self, batch_size: int = 64, shared_prefix: bool = True, decode: str = "auto", compile_backend: str = "inductor",
                 max_cache_tokens: int | None = None, **sampling: Any):
        super().__init__(**sampling)
        check("rollout.batch_size", batch_size, integer=True, low=1)
        check("rollout.max_cache_tokens", max_cache_tokens, integer=True, low=1, optional=True)
        self.batch_size = batch_size
        self.shared_prefix = shared_prefix
        self.decode = choose("rollout.decode", decode, DECODE_MODES)
        self.compile_backend = compile_backend
        self.model = None
        self.tokenizer = None
        self.compiles = 0
        self._caches: dict[tuple[int, bool], StaticCache] = {}  # (rows, autocast on) -> its one static cache (reused: fixed addresses)
        self._cache_len = max_cache_tokens or 0  # a floor: set to prompt + budget, a run compiles once per row bucket

    def update_weights(self, model: Any, tokenizer: Any = None) -> None:
        # Same module object as the policy: its weights are always current (a compiled forward reads the
        # parameters it is given, and the optimizer updates them in place).
        if model is not self.model:
            self._caches.clear()
        self.model = model
        if tokenizer is not None:
            self.tokenizer = tokenizer

    def mode(self, device: torch.device) -> str:
        if self.decode == "auto":
            return "compiled" if device.type == "cuda" else "eager"
        return self.decode

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int | None = None, greedy: bool = False) -> list[Generation]:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("HFEngine.generate before update_weights(model, tokenizer)")
        graphs_before = _compiled_graphs()
        out: list[Generation] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            out += self._generate_chunk(prompt_ids[start : start + self.batch_size], max_new_tokens or self.max_new_tokens, greedy)
        self.compiles += _compiled_graphs() - graphs_before
        self.last_metrics = {"rollout/compiles": float(self.compiles)}
        return out

    def _generate_chunk(self, prompts: list[list[int]], max_new_tokens: int, greedy: bool) -> list[Generation]:
        model, tok = self.model, self.tokenizer
        device = next(model.parameters()).device
        mode = self.mode(device)
        count = len(prompts)
        if mode == "compiled":  # pad the rows to a bucket with copies of the last prompt (their outputs are dropped)
            prompts = prompts + [prompts[-1]] * (self.row_bucket(count) - count)
        pad_id = pad_token_id(tok)
        input_ids, attention = pad_sequences(prompts, pad_id, side="left")
        width = input_ids.shape[1]
        eos_ids = stop_token_ids(tok, model)
        greedy = greedy or self.temperature == 0
        was_training = model.training
        model.eval()
        # A fresh config: a checkpoint's own sampling defaults (repetition penalty, top-k...) would make the
        # roll-outs come from another distribution than the one the trainer scores.
        sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        compiled = mode == "compiled"
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
            use_cache=True, disable_compile=not compiled, compile_config=_compile_config(device, self.compile_backend) if compiled else None,
            **sampling,
        )
        # transformers fills a passed config's unset fields from model.generation_config, so that one is
        # swapped out for the call, not merely overridden.
        owner = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: the wrapped model's
        saved, owner.generation_config = owner.generation_config, config
        try:
            input_ids, attention = input_ids.to(device), attention.to(device)
            cache = self._static_cache(len(prompts), width + max_new_tokens, owner, keep=compiled) if mode != "eager" else None
            if self.shared_prefix:
                prefilled = self._prefill_once(model, input_ids, attention, cache)
            else:
                prefilled = {cache_argument(model): cache} if cache is not None else {}
            if len(prompts) > count:  # padding rows stop after their first token: they must not keep the batch decoding
                prefilled["stopping_criteria"] = StoppingCriteriaList([_RowsDone(count)])
            sequences = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config, **prefilled)
        finally:
            owner.generation_config = saved
            model.train(was_training)
        new_tokens = sequences[:count, width:].cpu()
        generations = []
        for i in range(count):
            ids = new_tokens[i].tolist()
            end = next((j + 1 for j, t in enumerate(ids) if t in eos_ids), None)
            # No engine log-probs: keeping every step's full-vocabulary scores costs GBs on real models, and
            # the trainer recomputes log-probs with the policy anyway (engine and trainer may differ).
            generations.append(Generation(ids[:end] if end is not None else ids, finished=end is not None))
        return generations

    def row_bucket(self, rows: int) -> int:
        """The smallest batch_size / 2^k (k <= 3) holding `rows`: at most four batch shapes per run."""
        bucket = self.batch_size
        for _ in range(3):
            if rows > -(-bucket // 2):
                break
            bucket = -(-bucket // 2)
        return bucket

    def _static_cache(self, rows: int, needed: int, model: Any, keep: bool) -> StaticCache:
        """The cache of `rows` rows, emptied; its length (the prompt + the token budget, rounded up) only grows,
        so a run sees few shapes. `keep` (compiled): one cache object per shape is kept, at the addresses CUDA graphs
        recorded; rows are bucketed then, so at most 4 x 2 are held. Uncompiled, each call gets a fresh one."""
        step = 1 << max(needed.bit_length() - 3, 0)  # four lengths per octave: at most 25 % of attention on padding
        length = -(-needed // step) * step
        if length > self._cache_len:
            self._cache_len = length
            self._caches.clear()
        if not keep:
            return StaticCache(config=model.config, max_cache_len=self._cache_len)
        key = (rows, torch.is_autocast_enabled(model.device.type))  # the cache takes the dtype of its first keys
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = StaticCache(config=model.config, max_cache_len=self._cache_len)
        else:
            cache.reset()
        return cache

    @staticmethod
    def _prefill_once(model: Any, input_ids: torch.Tensor, attention: torch.Tensor,
                      static: StaticCache | None = None) -> dict[str, Any]:
        """The key/value cache of all prompt columns but the last, computed once per distinct prompt and repeated
        for its copies (`generate` then feeds the last column itself), written into `static` if given; {} (or just
        the empty static cache) when no prompt repeats."""
        name = cache_argument(model)
        first, inverse = unique_rows(input_ids, attention)
        if len(first) == len(input_ids) or input_ids.shape[1] < 2:
            return {name: static} if static is not None else {}
        cache = DynamicCache()
        ids, mask = input_ids[first, :-1], attention[first, :-1]
        # Only the cache is wanted: logits_to_keep=1, or the pass would build [prompts, width, vocab] logits for nothing.
        model(input_ids=ids, attention_mask=mask, position_ids=prompt_positions(mask), use_cache=True, logits_to_keep=1, **{name: cache})
        expanded = expanded_cache(cache, inverse)
        if static is None:
            return {name: expanded}
        for layer, source in zip(static.layers, expanded.layers):
            layer.update(source.keys, source.values)  # in place from position 0 (the static cache was just emptied)
        return {name: static}


class _RowsDone(StoppingCriteria):
    """Rows from `first` on are padding: done from their first token (they still draw their random numbers, so the
    real rows sample as they would alone with the same padding)."""

    def __init__(self, first: int):
        self.first = first

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done[self.first :] = True
        return done


def _compile_config(device: torch.device, backend: str) -> CompileConfig:
    # CUDA graphs remove the per-token launch overhead that dominates a small model's decoding; on other devices
    # inductor's default mode (transformers compiles off-GPU only when told to: `_compile_all_devices`).
    config = CompileConfig(fullgraph=False, dynamic=False, backend=backend,
                           mode="reduce-overhead" if device.type == "cuda" and backend == "inductor" else None)
    config._compile_all_devices = device.type != "cuda"
    # One graph per (rows, cache length) bucket: at most 4 row buckets x a few lengths, well under a raised limit.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return config


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def stop_token_ids(tokenizer: Any, model: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}
