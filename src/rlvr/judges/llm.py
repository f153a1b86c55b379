"""A generative step judge: an instruction model reads the numbered steps and names the first wrong one."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlvr.batch import Example
from rlvr.data.prompts import encode_chat
from rlvr.judges.base import Judge, Verdict
from rlvr.judges.loading import LazyModel
from rlvr.models.hf import HFModel
from rlvr.options import check, choose
from rlvr.rollout.hf import HFEngine

DEFAULT_TEMPLATE = Path(__file__).parent / "prompts" / "first_error.txt"
PLACEHOLDERS = ("problem", "reference", "steps", "num_steps")
REQUIRED_PLACEHOLDERS = ("problem", "steps")
# judge.on_malformed: num_steps -> the first error an unreadable reply is taken to name.
ON_MALFORMED = {"last_step": lambda num_steps: num_steps - 1, "none": lambda num_steps: None}

# The last "FIRST_ERROR: <value>" in the reply: models sometimes restate the format before answering.
_MARKER = re.compile(r"first[_ ]error\s*:[ \t]*([^\n]*)", re.IGNORECASE)
# The value: an optional "Step", then a number or "none" ending the word (so "2." and "2 (the sum)" pass, "2.5" does not).
_VALUE = re.compile(r"(?:step\s*)?(none|\d+)[.,;:)!*`]*(?:\s|$)", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def parse_first_error(text: str, num_steps: int) -> int | None:
    """The 0-based first wrong step named by a `FIRST_ERROR: <k>` (1-based) line; None for `FIRST_ERROR: none`.

    Accepted variants: any case, `FIRST ERROR`, no space after the colon, `Step 3`, `*` / backticks around the
    value, trailing punctuation or words after it. Anything else (no marker, no number, k outside 1..num_steps)
    raises ValueError.
    """
    matches = _MARKER.findall(text)
    if not matches:
        raise ValueError(f"no 'FIRST_ERROR:' line in judge output {text!r}")
    raw = matches[-1].strip()
    value = _VALUE.match(raw.strip(" \t*`"))
    if value is None:
        raise ValueError(f"FIRST_ERROR value {raw!r} is neither a step number nor 'none'")
    if value[1].lower() == "none":
        return None
    step = int(value[1])
    if not 1 <= step <= num_steps:
        raise ValueError(f"FIRST_ERROR step {step} is outside 1..{num_steps}")
    return step - 1


def fill_template(template: str, example: Example, steps: list[str]) -> str:
    """The template with its placeholders replaced in one pass (so braces inside the inserted text are left alone)."""
    values = {
        "problem": example.prompt,
        "reference": example.solution or "(no reference solution given)",
        "steps": "\n".join(f"Step {i}: {step}" for i, step in enumerate(steps, start=1)),
        "num_steps": str(len(steps)),
    }
    return _PLACEHOLDER.sub(lambda m: values[m[1]], template)


class LLMJudge(Judge):
    """Asks a causal LM (greedy, through HFEngine) for the first wrong step of each response.

    A reply that cannot be parsed never stops training: its verdict is the `on_malformed` fallback with
    parsed=False ("last_step": the error is in the final step; "none": no error found).
    A response with no steps is not sent to the model: there is no step to blame (first_error None).
    model: a hub name or folder, or "policy": the policy's own starting weights (its model config `policy`).
    """

    def __init__(
        self,
        model: str,
        policy: HFModel | None = None,
        prompt_template: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 16,
        batch_size: int = 16,
        on_malformed: str = "last_step",
        cache_size: int = 100_000,
    ):
        super().__init__(cache_size=cache_size)
        self._malformed_error = choose("judge.on_malformed", on_malformed, ON_MALFORMED)
        check("judge.max_new_tokens", max_new_tokens, integer=True, low=1)
        check("judge.batch_size", batch_size, integer=True, low=1)
        if prompt_template is not None and not isinstance(prompt_template, str):
            raise ValueError(f"judge.prompt_template must be a file path or null, got {prompt_template!r}")
        path = Path(prompt_template) if prompt_template else DEFAULT_TEMPLATE
        if not path.is_file():
            raise FileNotFoundError(f"judge.prompt_template {str(path)!r} is not a file")
        self.template = path.read_text()
        missing = [p for p in REQUIRED_PLACEHOLDERS if "{" + p + "}" not in self.template]
        if missing:
            raise ValueError(f"judge.prompt_template {str(path)!r} lacks the placeholder(s) {', '.join('{' + p + '}' for p in missing)}")
        self.on_malformed = on_malformed
        if model == "policy":  # a frozen copy of the policy's starting weights: no extra download, offline too
            if policy is None:
                raise ValueError("judge.model=policy needs the policy's model config: judge.policy=${model}")
            self.loader = LazyModel(policy.name_or_path, AutoModelForCausalLM.from_pretrained, device, dtype, policy.gguf_file)
        else:
            self.loader = LazyModel(model, AutoModelForCausalLM.from_pretrained, device=device, dtype=dtype)
        self.engine = HFEngine(num_generations=1, temperature=0, max_new_tokens=max_new_tokens, batch_size=batch_size)

    def prompt_text(self, example: Example, steps: list[str]) -> str:
        """The judge's request for one response, before any chat template."""
        return fill_template(self.template, example, steps)

    def prompt_ids(self, example: Example, steps: list[str]) -> list[int]:
        """Token ids sent to the judge: the request as a user turn when the tokenizer has a chat template."""
        _, tokenizer = self.loader.get()
        return encode_chat(tokenizer, self.prompt_text(example, steps))

    def fallback(self, num_steps: int) -> Verdict:
        return Verdict(self._malformed_error(num_steps), parsed=False)

    def _judge(self, examples: list[Example], responses: list[list[str]]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [Verdict(None) if not steps else None for steps in responses]
        todo = [i for i, steps in enumerate(responses) if steps]
        if not todo:
            return verdicts  # type: ignore[return-value]
        model, tokenizer = self.loader.get()
        self.engine.update_weights(model, tokenizer)
        with torch.inference_mode():
            generations = self.engine.generate([self.prompt_ids(examples[i], responses[i]) for i in todo])
        for i, generation in zip(todo, generations, strict=True):
            reply = tokenizer.decode(generation.token_ids, skip_special_tokens=True)
            try:
                verdicts[i] = Verdict(parse_first_error(reply, len(responses[i])))
            except ValueError:
                verdicts[i] = self.fallback(len(responses[i]))
        return verdicts  # type: ignore[return-value]
