"""RLVRModule checks its problems (rlvr.data.checks.checked_splits) before the policy's weights load, and takes a
duck-typed model plugin without `context_length`."""

import json
import logging

import pytest
from hydra import compose, initialize_config_module

from rlvr.models.hf import HFModel
from rlvr.train import build_module


class Loaded(Exception):
    """load_policy was reached: every check before it passed."""


@pytest.fixture
def math_dir(tmp_path, monkeypatch):
    rows = [{"problem": f"What is {i}+1?", "solution": f"We add.\nIt is \\boxed{{{i + 1}}}.", "answer": str(i + 1), "unique_id": f"q{i}"}
            for i in range(6)]
    rows[1]["answer"] = "\\frac{"  # a training row no completion can be scored right on
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def load_policy(self):
        raise Loaded

    monkeypatch.setattr(HFModel, "load_policy", load_policy)
    monkeypatch.delattr(HFModel, "context_length")  # as a duck-typed model plugin without it
    return tmp_path


def config(data_dir, *overrides):
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        return compose("train", overrides=["data=math500", f"data.path={data_dir}", "data.val_size=2", "reward=math",
                                           "algorithm.prompts_per_step=2", "rollout.num_generations=2", "max_steps=1", *overrides])


def test_a_bad_reference_answer_stops_the_constructor_before_the_policy_loads(math_dir):
    with pytest.raises(ValueError, match=r"1 of 4 training problems of math500 cannot be scored right by MathVerifyReward.*'q1'"):
        build_module(config(math_dir))


def test_with_bad_answers_skip_the_constructor_goes_on_to_load_the_policy(math_dir, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(Loaded):
        build_module(config(math_dir, "data.bad_answers=skip"))
    assert "skipped (data.bad_answers=skip)" in caplog.text
