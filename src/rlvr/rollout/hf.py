"""Roll-outs with `transformers`' `generate`: batched, left-padded, KV cache, sampling from the policy itself."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache

from rlvr.logprobs import cache_argument, expanded_cache, prompt_positions, unique_rows
from rlvr.models.hf import pad_token_id
from rlvr.rollout.base import Generation, RolloutEngine
from rlvr.tensors import pad_sequences


class HFEngine(RolloutEngine):
    """`shared_prefix`: identical prompts in a call (a group's G roll-outs) are prefilled once and their key/value
    cache repeated for each, instead of encoding each prompt G times (same tokens; tested)."""

    def __init__(self, batch_size: int = 64, shared_prefix: bool = True, **sampling: Any):
        super().__init__(**sampling)
        self.batch_size = batch_size
        self.shared_prefix = shared_prefix
        self.model = None
        self.tokenizer = None

    def update_weights(self, model: Any, tokenizer: Any = None) -> None:
        # Same module object as the policy: its weights are always current.
        self.model = model
        if tokenizer is not None:
            self.tokenizer = tokenizer

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int | None = None, greedy: bool = False) -> list[Generation]:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("HFEngine.generate before update_weights(model, tokenizer)")
        out: list[Generation] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            out += self._generate_chunk(prompt_ids[start : start + self.batch_size], max_new_tokens or self.max_new_tokens, greedy)
        return out

    def _generate_chunk(self, prompts: list[list[int]], max_new_tokens: int, greedy: bool) -> list[Generation]:
        model, tok = self.model, self.tokenizer
        device = next(model.parameters()).device
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
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
            use_cache=True, **sampling,
        )
        # transformers fills a passed config's unset fields from model.generation_config, so that one is
        # swapped out for the call, not merely overridden.
        owner = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: the wrapped model's
        saved, owner.generation_config = owner.generation_config, config
        try:
            input_ids, attention = input_ids.to(device), attention.to(device)
            prefilled = self._prefill_once(model, input_ids, attention) if self.shared_prefix else {}
            sequences = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config, **prefilled)
        finally:
            owner.generation_config = saved
            model.train(was_training)
        new_tokens = sequences[:, width:].cpu()
        generations = []
        for i in range(len(prompts)):
            ids = new_tokens[i].tolist()
            end = next((j + 1 for j, t in enumerate(ids) if t in eos_ids), None)
            # No engine log-probs: keeping every step's full-vocabulary scores costs GBs on real models, and
            # the trainer recomputes log-probs with the policy anyway (engine and trainer may differ).
            generations.append(Generation(ids[:end] if end is not None else ids, finished=end is not None))
        return generations


    @staticmethod
    def _prefill_once(model: Any, input_ids: torch.Tensor, attention: torch.Tensor) -> dict[str, Any]:
        """The key/value cache of all prompt columns but the last, computed once per distinct prompt and repeated
        for its copies (`generate` then feeds the last column itself); {} when no prompt repeats."""
        first, inverse = unique_rows(input_ids, attention)
        if len(first) == len(input_ids) or input_ids.shape[1] < 2:
            return {}
        name, cache = cache_argument(model), DynamicCache()
        ids, mask = input_ids[first, :-1], attention[first, :-1]
        model(input_ids=ids, attention_mask=mask, position_ids=prompt_positions(mask), use_cache=True, **{name: cache})
        return {name: expanded_cache(cache, inverse)}


def stop_token_ids(tokenizer: Any, model: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}
