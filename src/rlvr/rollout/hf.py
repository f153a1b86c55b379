"""Roll-outs with `transformers`' `generate`: batched, left-padded, KV cache, sampling from the policy itself."""

from __future__ import annotations

from typing import Any

import torch

from rlvr.rollout.base import Generation, RolloutEngine


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
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p) :] = 1
        eos_ids = _eos_ids(tok, model)
        greedy = greedy or self.temperature == 0
        was_training = model.training
        model.eval()
        try:
            result = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else self.temperature,
                top_p=None if greedy else self.top_p,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=sorted(eos_ids),
                use_cache=True,
                output_scores=True,
                return_dict_in_generate=True,
            )
        finally:
            model.train(was_training)
        new_tokens = result.sequences[:, width:].cpu()
        # Log-probs of the sampled tokens under the (temperature / top-p processed) sampling distribution.
        scores = torch.stack(result.scores, dim=1).float().log_softmax(-1).cpu()
        token_logprobs = scores.gather(-1, new_tokens[:, : scores.shape[1], None]).squeeze(-1)
        generations = []
        for i in range(len(prompts)):
            ids = new_tokens[i].tolist()
            end = next((j + 1 for j, t in enumerate(ids) if t in eos_ids), None)
            kept = ids[:end] if end is not None else ids
            generations.append(Generation(kept, token_logprobs[i, : len(kept)].tolist(), finished=end is not None))
        return generations


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}
