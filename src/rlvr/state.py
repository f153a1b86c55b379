"""Everything a resumed run needs beyond the weights and optimizer: random generators and plugin states."""

from __future__ import annotations

import errno
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric.plugins import TorchCheckpointIO


def capture_rng() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> tuple:
    # Plain Python types: Lightning loads checkpoints with weights_only=True, which refuses numpy arrays.
    name, keys, *rest = np.random.get_state()
    return (name, keys.tolist(), *(r.item() if isinstance(r, np.generic) else r for r in rest))


def plugin_states(plugins: dict[str, Any]) -> dict[str, Any]:
    return {name: p.state_dict() for name, p in plugins.items() if hasattr(p, "state_dict")}


def load_plugin_states(plugins: dict[str, Any], states: dict[str, Any]) -> None:
    for name, plugin in plugins.items():
        if name in states and hasattr(plugin, "load_state_dict"):
            plugin.load_state_dict(states[name])


def check_finite(policy: torch.nn.Module) -> None:
    """A checkpoint of NaN/inf weights would poison every resume: refuse to write one."""
    bad = [name for name, p in policy.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(f"{len(bad)} policy tensors hold NaN/inf (e.g. {bad[0]}): no checkpoint is written")


# How a full disk reads where it is not an OSError: torch's zip writer, safetensors (a plain Exception), Rust's io.
FULL_DISK_MESSAGES = ("unexpected pos", "os error 28", "no space left", "disk quota exceeded")


def full_disk(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(err).lower() for text in FULL_DISK_MESSAGES)


@contextmanager
def disk_errors(what: str, path: Path):
    """A failed write of `what` at `path` because the disk is full is an OSError naming it and the space left there:
    torch reports a full disk as `[enforce fail at inline_container.cc] unexpected pos`, safetensors as a bare
    SafetensorError; neither names the cause. Any other error passes unchanged."""
    try:
        yield
    except Exception as err:
        if not full_disk(err):
            raise
        try:
            free = f"{shutil.disk_usage(Path(path).parent).free / 1e9:.2f} GB free there"
        except OSError:
            free = "free space unknown"
        raise OSError(errno.ENOSPC, f"writing {what} {path} failed, the disk is full or over quota ({free}): free space "
                      f"or move the run directory, then resume with ckpt_path=auto ({type(err).__name__}: {err})") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, then renames it into place. On the run directory's own
    filesystem the rename is atomic, so a crash leaves the old checkpoint or the new one, never a truncated one
    (Lightning's default stages the file in $TMPDIR and moves it across filesystems). A failed write raises."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.partial")
        try:
            with disk_errors("checkpoint", path), open(staged, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
