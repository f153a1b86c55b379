"""rlvr.evaluate runs training's row checks (rlvr.data.checks) on the rows it scores, before the weights load."""

import json
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rlvr.evaluate import evaluate
from rlvr.models.hf import HFModel

CONF = Path(__file__).parents[1] / "conf"


class Loaded(Exception):
    """load_policy was reached: every check before it passed."""


def eval_config(data_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("evaluate", overrides=["model=tiny", "data=math500", f"data.path={data_dir}", "data.val_size=3",
                                              "reward=math", "eval.n=1", "eval.k=1", "rollout.max_new_tokens=8", "device=cpu", *overrides])


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    rows = [{"problem": f"What is {i}+1?", "solution": f"It is \\boxed{{{i + 1}}}.", "answer": str(i + 1), "unique_id": f"q{i}"} for i in range(4)]
    rows[2]["answer"] = "???"  # a validation row no completion can be scored right on
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def load_policy(self):
        raise Loaded

    monkeypatch.setattr(HFModel, "load_policy", load_policy)
    return tmp_path


def test_a_bad_evaluated_reference_is_an_error_before_the_model_loads(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"1 of 3 validation problems of math500 cannot be scored right by MathVerifyReward.*'\?\?\?'"):
        evaluate(eval_config(data_dir), tmp_path)


def test_bad_answers_skip_leaves_the_row_out_of_the_evaluation(data_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(Loaded):
        evaluate(eval_config(data_dir, "data.bad_answers=skip"), tmp_path)
    assert "1 of 3 validation problems of math500 cannot be scored right" in caplog.text and "skipped" in caplog.text


def test_only_the_evaluated_rows_are_checked(data_dir, tmp_path):
    with pytest.raises(Loaded):  # eval.limit=1: the bad third validation row is not evaluated
        evaluate(eval_config(data_dir, "eval.limit=1"), tmp_path)
