"""Building a vLLM engine beside a trainer: its side effects on the process are undone, its CPU limits named.

A module of its own: vLLM keeps one engine's parallel state per process, and closing an engine tears it down,
so these builds come after test_vllm_engine.py has closed its engine.
"""

from __future__ import annotations

import random

import pytest
import torch

from rlvr.models.hf import HFModel
from rlvr.rollout.vllm import VLLMEngine

TINY = HFModel("rlvr:tiny-arith")
CPU = {"kv_cache_gib": 1, "enforce_eager": True}


@pytest.fixture(scope="module")
def tok():
    return TINY.load_tokenizer()


def test_building_keeps_the_trainers_rng_and_thread_control(tok):
    torch.manual_seed(123)
    random.seed(5)
    state, py_state, set_threads, threads = torch.get_rng_state(), random.getstate(), torch.set_num_threads, torch.get_num_threads()
    engine = VLLMEngine(num_generations=1, **CPU)
    engine.update_weights(TINY.load_policy(), tok)  # builds the engine: vLLM seeds the global RNGs
    try:
        assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state
        assert torch.set_num_threads is set_threads and torch.get_num_threads() == threads
        assert engine.generate([[3, 4, 5]], max_new_tokens=2, greedy=True)[0].token_ids  # built after another was closed
    finally:
        engine.close()


def test_sleep_mode_is_refused_on_cpu_with_a_clear_error(tok):
    engine = VLLMEngine(sleep_level=1, **CPU)
    with pytest.raises(ValueError, match="sleep_level=1 needs a GPU"):
        engine.update_weights(TINY.load_policy(), tok)

