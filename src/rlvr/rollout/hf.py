"""Roll-outs with `transformers`' `generate`: batched, left-padded, KV cache, sampling from the policy itself."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig

from rlvr.models.hf import pad_token_id
from rlvr.rollout.base import Generation, RolloutEngine
from rlvr.tensors import pad_sequences


class HFEngine(RolloutEngine):
    def __init__(self, batch_size: int = 64, **sampling: Any):
        super().__init__(**sampling)
        self.batch_size = batch_size
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
        eos_ids = _eos_ids(tok, model)
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
            sequences = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config)
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


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}
