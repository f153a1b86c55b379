"""Model loading shared by the model-based judges: device / dtype resolution, load once on first use, frozen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlvr.models.hf import check_device, check_dtype, from_hub, load_tokenizer, resolve_device, resolve_dtype, resolve_path

# (model name, device, dtype, extra from_pretrained kwargs) -> model
ModelBuilder = Callable[..., Any]


class LazyModel:
    """A frozen model + tokenizer, loaded from `name` (hub name or local folder) the first time it is needed.

    Building the judge at config time stays cheap (and needs no GPU); the weights arrive at the first
    judged batch and stay. `builder(name, **from_pretrained_kwargs)` makes the model (an Auto class's
    `from_pretrained`, chosen by the judge).
    """

    def __init__(self, name: str, builder: ModelBuilder, device: str = "auto", dtype: str = "auto", gguf_file: str | None = None):
        if not name or not isinstance(name, str):
            raise ValueError(f"judge.model must be a hub name or a local folder, got {name!r}")
        self.name = name
        self.builder = builder
        self.gguf = {"gguf_file": gguf_file} if gguf_file else {}  # a GGUF checkpoint in that folder (dequantised on load)
        self.device = check_device(device, "judge.device")
        self.dtype = check_dtype(dtype, "judge.dtype")  # resolved against the device at load time (rlvr.models.hf.resolve_dtype)
        self._loaded: tuple[Any, Any] | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def get(self) -> tuple[Any, Any]:
        """(model, tokenizer), loading them on the first call."""
        if self._loaded is None:
            device = resolve_device(self.device)
            dtype = resolve_dtype(self.dtype, device)
            source = resolve_path(self.name)  # hub name, folder, or rlvr:/pkg: as for the policy
            tokenizer = from_hub(load_tokenizer, source, "judge.model", **self.gguf)
            # device_map puts the weights straight on the device: a 7B judge never passes through CPU memory whole.
            model = from_hub(self.builder, source, "judge.model", device_map=str(device), dtype=dtype, **self.gguf)
            model.eval()
            model.requires_grad_(False)  # a judge is never trained; no optimizer or DDP should see it
            self._loaded = (model, tokenizer)
        return self._loaded
