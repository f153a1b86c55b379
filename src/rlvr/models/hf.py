"""Which model to train, and how to load it: hub name or local folder, GGUF file, dtype, LoRA."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def resolve_path(name_or_path: str) -> str:
    """Where a model lives. `rlvr:NAME`: shipped in rlvr's assets folder. `pkg:MODULE`: the folder of an
    installed Python package that carries model files. Anything else (hub name, folder) goes to transformers."""
    if name_or_path.startswith("rlvr:"):
        folder = ASSETS / name_or_path[len("rlvr:") :]
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"built-in model {name_or_path!r} not found at {folder}; rebuild it with `python -m rlvr.sft --out {folder}`")
        return str(folder)
    if name_or_path.startswith("pkg:"):
        module = name_or_path[len("pkg:") :]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model {name_or_path!r}: Python package {module!r} is not installed")
        return spec.submodule_search_locations[0]
    return name_or_path


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def check_dtype(name: str, option: str = "dtype") -> str:
    """`name` if it is "auto" or a DTYPES key, else a ValueError naming the allowed values (and the `option`)."""
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"{option} must be auto | {' | '.join(DTYPES)}, got {name!r}")
    return name


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """A dtype name as a torch dtype. "auto" goes by the device: bfloat16 on a GPU that has it (compute
    capability 8+, or ROCm), float16 on an older GPU, float32 on CPU where half precision is slow.
    `device` None: the device a run would pick, resolve_device("auto")."""
    check_dtype(name)
    if name != "auto":
        return DTYPES[name]
    if device is None:
        device = resolve_device("auto")
    if device.type == "cuda":
        bf16 = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if bf16 else torch.float16
    return torch.float32


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS token (what HFModel.load_tokenizer sets)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has neither a pad nor an EOS token to pad with")


def from_hub(load: Callable[..., Any], source: str, option: str, **kwargs: Any) -> Any:
    """`load(source, **kwargs)`; when `source` is no local folder and the hub cannot give it (offline, or a name
    it does not have), an error that names the option and how to point it at a local copy."""
    try:
        return load(source, **kwargs)
    except OSError as err:
        if Path(source).is_dir():
            raise
        raise OSError(
            f"{option}={source!r} is not a local folder and could not be loaded from the Hugging Face hub ({err}). "
            f"Without hub access: download it where the hub is reachable (`hf download {source} --local-dir DIR`), "
            f"copy DIR here and run with {option}=/path/to/DIR"
        ) from err


def load_tokenizer(source: str, **kwargs: Any):
    """AutoTokenizer, except for a generic fast tokenizer saved beside a model config: transformers 5
    then builds the model type's own tokenizer class around it and swaps its pre-tokenizer (our
    character tokenizers lose spaces and newlines), so such a folder is loaded as what it was saved as."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(source) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get("tokenizer_class") in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        return PreTrainedTokenizerFast.from_pretrained(source)
    return AutoTokenizer.from_pretrained(source, **kwargs)


def check_device(device: str, option: str = "device") -> str:
    if device == "auto":
        return device
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{option} {device!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1)") from err
    return device


def resolve_device(device: str) -> torch.device:
    """"auto": the first GPU when there is one, else the CPU. A GPU asked for and absent is an error, not a silent CPU."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available here (use device=cpu or auto)")
    return resolved


def disable_dropout(model: torch.nn.Module) -> None:
    """No dropout in the policy: with it, the sampling policy and the scored one differ by a random mask, and
    an exactly on-policy step sees ratios far from 1 (what TRL's `disable_dropout` fixes too)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout", "hidden_dropout"):  # rates that attention functions read as floats
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    for name, value in model.config.to_dict().items():
        if "dropout" in name and isinstance(value, float):
            setattr(model.config, name, 0.0)


class HFModel:
    """A causal LM loadable by `transformers`: the policy, its frozen reference copy and its tokenizer."""

    def __init__(
        self,
        name_or_path: str,
        gguf_file: str | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32",
        reference_dtype: str | None = None,
        gradient_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        bare_prompts: bool = False,
    ):
        self.name_or_path = name_or_path
        self.gguf_file = gguf_file
        self.tokenizer_name = tokenizer
        # Names, checked now and resolved at load time ("auto" goes by the device the run uses, as for judges).
        self.dtype = check_dtype(dtype, "model.dtype")  # the trained weights: keep float32 (bf16 weights swallow small Adam steps)
        self.reference_dtype = check_dtype(reference_dtype, "model.reference_dtype") if reference_dtype else self.dtype  # frozen copy
        self.gradient_checkpointing = gradient_checkpointing
        if lora and not isinstance(lora, Mapping):
            raise ValueError(f"model.lora must be a mapping of LoRA settings (r, alpha, ...) or null, got {lora!r}")
        self.lora = dict(lora) if lora else None
        if self.lora and self.lora.get("lora_dropout"):
            # Dropout is off in the policy (disable_dropout), the adapters' too: the sampled and the scored policy are one function.
            log.warning("model.lora.lora_dropout=%s is ignored: dropout is off in the policy, its adapters included", self.lora["lora_dropout"])
        self.trust_remote_code = trust_remote_code
        self.attn_implementation = attn_implementation
        self.bare_prompts = bare_prompts  # trained on the task's bare prompts: no instructions, examples or chat turns

    @property
    def path(self) -> str:
        return resolve_path(self.name_or_path)

    def _gguf(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def load_tokenizer(self):
        source = resolve_path(self.tokenizer_name) if self.tokenizer_name else self.path
        option = "model.tokenizer" if self.tokenizer_name else "model.name_or_path"
        extra = {} if self.tokenizer_name else self._gguf()
        tokenizer = from_hub(load_tokenizer, source, option, trust_remote_code=self.trust_remote_code, **extra)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        return tokenizer

    def context_length(self) -> int | None:
        """The longest sequence (prompt and completion) the model takes, from its config alone: no weights are read
        (of a local GGUF file, only its header's keys up to the context length). None when the config does not say,
        logged: the context check of rlvr.data.checks is then off."""
        from transformers import AutoConfig

        local_gguf = Path(self.path) / self.gguf_file if self.gguf_file else None
        if local_gguf is not None and local_gguf.is_file():
            from rlvr.models.gguf_header import gguf_context_length

            length = gguf_context_length(local_gguf)
        else:
            config = from_hub(AutoConfig.from_pretrained, self.path, "model.name_or_path", trust_remote_code=self.trust_remote_code, **self._gguf())
            # GPT-2's n_positions comes through max_position_embeddings' attribute map; older configs name it otherwise.
            length = next((v for v in (getattr(config, k, None) for k in ("max_position_embeddings", "n_ctx", "max_seq_len", "seq_length"))
                           if isinstance(v, int) and v > 0), None)
        if not (isinstance(length, int) and length > 0):
            log.warning("%s's config gives no context length: prompts are checked against data.max_prompt_tokens only", self.name_or_path)
            return None
        return length

    def _load(self, dtype: str):
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": self.trust_remote_code, **self._gguf()}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        model = from_hub(AutoModelForCausalLM.from_pretrained, self.path, "model.name_or_path", **kwargs)
        if self.gguf_file:  # dequantised to `dtype` on load: nothing quantised is left, so it saves as a plain model
            model.hf_quantizer, model.is_quantized = None, False
            model.config.__dict__.pop("quantization_config", None)
        return model

    def load_policy(self) -> torch.nn.Module:
        model = self._load(self.dtype)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False  # generation turns the cache back on in eval mode
        if self.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **self.lora))
        disable_dropout(model)  # after LoRA: its adapters bring their own dropout (lora_dropout)
        model.train()
        return model

    def load_reference(self) -> torch.nn.Module:
        model = self._load(self.reference_dtype)
        model.eval().requires_grad_(False)
        return model
