"""A process reward model as the step judge: one correctness score per step, the first low one is the first error.

Input format and scoring follow the Qwen2.5-Math-PRM model card (huggingface.co/Qwen/Qwen2.5-Math-PRM-7B,
"Quick Start" and its `make_step_rewards` example):
- the conversation is [system "Please reason step by step, and put your final answer within \\boxed{}.",
  user = the problem, assistant = the steps joined by "<extra_0>" with one more "<extra_0>" at the end],
  rendered with the tokenizer's chat template (tokenize=False, add_generation_prompt=False);
- the model returns 2-class logits per token (`outputs[0]`, [B, T, 2]); a step's reward is the softmax
  probability of class 1 ("positive") at its "<extra_0>" position, a value in 0..1;
- it is loaded with AutoModel.from_pretrained(..., trust_remote_code=True): its config names the custom
  architecture Qwen2ForProcessRewardModel, code shipped with the checkpoint (modeling_qwen2_rm.py).
  vLLM's model registry notes that this remote code does not run on transformers newer than 4.53
  (its test model registry: `max_transformers_version="4.53"`), so with transformers 5 the real
  checkpoint may need an older transformers or a re-saved Qwen2ForTokenClassification copy;
  checkpoints saved as *ForTokenClassification load without remote code.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification

from rlvr.batch import Example
from rlvr.judges.base import Judge, Verdict
from rlvr.judges.loading import LazyModel
from rlvr.models.hf import pad_token_id
from rlvr.options import check
from rlvr.tensors import pad_sequences

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def load_prm(name: str, **kwargs: Any) -> Any:
    """A token-classification checkpoint through its Auto class; anything else as the checkpoint's own (remote) code."""
    architectures = AutoConfig.from_pretrained(name, trust_remote_code=True).architectures or []
    if any(arch.endswith("ForTokenClassification") for arch in architectures):
        return AutoModelForTokenClassification.from_pretrained(name, **kwargs)
    return AutoModel.from_pretrained(name, trust_remote_code=True, **kwargs)


def first_below(scores: list[float], threshold: float) -> int | None:
    """Index of the first score under `threshold`; None when every step clears it."""
    return next((i for i, score in enumerate(scores) if score < threshold), None)


class PRMJudge(Judge):
    """Scores every step with a process reward model; the first step scoring below `threshold` is the first error.

    A response with no steps is not sent to the model (first_error None). A step that contains the step
    token itself would shift every score onto the wrong step, so it is an error, never a silent guess.
    """

    def __init__(
        self,
        model: str = "Qwen/Qwen2.5-Math-PRM-7B",
        threshold: float = 0.5,
        step_token: str = "<extra_0>",
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        system_prompt: str | None = QWEN_PRM_SYSTEM,
        cache_size: int = 100_000,
    ):
        super().__init__(cache_size=cache_size)
        check("judge.threshold", threshold, low=0, high=1, low_open=True, high_open=True)  # a cut on P(step is correct)
        check("judge.batch_size", batch_size, integer=True, low=1)
        if not step_token:
            raise ValueError("judge.step_token must be a non-empty token string, e.g. <extra_0>")
        self.threshold = threshold
        self.step_token = step_token
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.loader = LazyModel(model, load_prm, device=device, dtype=dtype)

    def step_token_id(self) -> int:
        _, tokenizer = self.loader.get()
        ids = tokenizer.encode(self.step_token, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ValueError(f"judge.step_token {self.step_token!r} is not a single token of {self.loader.name!r}'s tokenizer")
        return ids[0]

    def input_text(self, example: Example, steps: list[str]) -> str:
        """What the PRM reads for one response: the chat template when the tokenizer has one, else plain text."""
        _, tokenizer = self.loader.get()
        answer = "".join(step + self.step_token for step in steps)
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": answer}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return "\n\n".join(part for part in (self.system_prompt, example.prompt, answer) if part)

    def input_ids(self, example: Example, steps: list[str]) -> list[int]:
        _, tokenizer = self.loader.get()
        chat = bool(getattr(tokenizer, "chat_template", None))
        ids = tokenizer.encode(self.input_text(example, steps), add_special_tokens=not chat)
        found = ids.count(self.step_token_id())
        if found != len(steps):
            raise ValueError(
                f"PRM input for example {example.id!r} holds {found} {self.step_token!r} tokens for {len(steps)} steps: "
                f"a step or the problem contains the step token (or the chat template adds one)"
            )
        return ids

    def step_scores(self, examples: list[Example], responses: list[list[str]]) -> list[list[float]]:
        """P(step is correct) for every step of every response, in order (uncached; `__call__` caches verdicts)."""
        model, tokenizer = self.loader.get()
        sep = self.step_token_id()
        device = next(model.parameters()).device
        pad_id = pad_token_id(tokenizer)
        out: list[list[float]] = [[] for _ in responses]
        todo = [i for i, steps in enumerate(responses) if steps]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            rows = [self.input_ids(examples[i], responses[i]) for i in chunk]
            # Right padding: with causal attention the real tokens never see it, and positions stay 0..len-1.
            ids, mask = pad_sequences(rows, pad_id, side="right")
            with torch.inference_mode():
                output = model(input_ids=ids.to(device), attention_mask=mask.to(device))
            logits = output.logits if hasattr(output, "logits") else output[0]
            if logits.dim() != 3 or logits.shape[-1] != 2:
                raise ValueError(f"PRM {self.loader.name!r} must return [batch, tokens, 2] logits, got shape {tuple(logits.shape)}")
            positive = logits.float().softmax(-1)[..., 1].cpu()
            at_steps = (ids == sep) & mask.bool()
            for j, i in enumerate(chunk):
                out[i] = positive[j][at_steps[j]].tolist()
        return out

    def _judge(self, examples: list[Example], responses: list[list[str]]) -> list[Verdict]:
        return [Verdict(first_below(scores, self.threshold)) for scores in self.step_scores(examples, responses)]
