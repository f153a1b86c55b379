"""rlvr.evaluate on code: pass@1 / pass@k from programs run in the sandbox, greedy-only runs, reward errors reported."""

from __future__ import annotations

import gzip
import json
import string
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from transformers import AutoModelForCausalLM

from rlvr.batch import Example
from rlvr.data.code import HumanEval
from rlvr.data.prompts import PromptEncoder
from rlvr.evaluate import evaluate, format_table, pass_at_k, score_problems, summarise
from rlvr.models.tiny import build_char_tokenizer, tiny_qwen2_config
from rlvr.rewards.code import CodeReward
from rlvr.rewards.sandbox import Sandbox
from rlvr.rollout.base import Generation

HUMANEVAL = Path(__file__).parent / "fixtures" / "code" / "humaneval" / "HumanEval.jsonl.gz"
TOKENIZER = build_char_tokenizer(string.printable)


class ScriptedEngine:
    """Answers each prompt (decoded) with fixed texts: samples in turn from `sampled`, greedy from `greedy`."""

    def __init__(self, sampled, greedy):
        self.sampled, self.greedy, self.calls = sampled, greedy, {}

    def generate(self, prompt_ids, max_new_tokens=None, greedy=False):
        out = []
        for ids in prompt_ids:
            prompt = TOKENIZER.decode(ids)
            if greedy:
                text = self.greedy[prompt]
            else:
                i = self.calls[prompt] = self.calls.get(prompt, -1) + 1
                text = self.sampled[prompt][i]
            out.append(Generation(TOKENIZER(text, add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id], True))
        return out


@pytest.fixture(scope="module")
def reward():
    return CodeReward(Sandbox(timeout_seconds=3), workers=2)


def test_pass_at_k_counts_programs_that_pass_their_tests(reward):
    problems = HumanEval(path=str(HUMANEVAL)).val()[:2]
    with gzip.open(HUMANEVAL, "rt") as handle:
        right = [json.loads(line)["canonical_solution"] for line, _ in zip(handle, range(2))]
    wrong = "    return None\n"
    engine = ScriptedEngine(
        sampled={problems[0].prompt: [right[0], wrong, right[0], wrong], problems[1].prompt: [wrong] * 3 + [right[1]]},
        greedy={problems[0].prompt: wrong, problems[1].prompt: right[1]},
    )
    tally = {}
    scored = score_problems(problems, PromptEncoder(HumanEval(), TOKENIZER, bare=True), TOKENIZER, engine, reward, n=4, chunk=1, tally=tally)
    assert scored == [{"id": "HumanEval/0", "correct": 2, "greedy_correct": False}, {"id": "HumanEval/1", "correct": 1, "greedy_correct": True}]
    summary = summarise(scored, n=4, k=2)
    assert summary["greedy_pass@1"] == 0.5 and summary["pass@1"] == pytest.approx(3 / 8)
    assert summary["pass@k"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 2)
    assert tally == {"reward_errors": 0}


def test_greedy_only_and_reward_errors_are_reported(reward):
    problems = [*HumanEval(path=str(HUMANEVAL)).val()[:1], Example(id="no-tests", prompt="x", answer="")]
    engine = ScriptedEngine(sampled={}, greedy={problems[0].prompt: "    return False\n", "x": "y"})
    tolerant = CodeReward(reward.sandbox, on_error="zero")
    tally = {}
    scored = score_problems(problems, PromptEncoder(HumanEval(), TOKENIZER, bare=True), TOKENIZER, engine, tolerant, n=0, chunk=2, tally=tally)
    assert [p["correct"] for p in scored] == [None, None] and tally == {"reward_errors": 1}
    summary = summarise(scored, n=0, k=1)
    assert summary["pass@1"] is None and summary["pass@k"] is None and summary["greedy_pass@1"] == 0.0
    assert format_table({"humaneval": summary}, 1).splitlines()[1].split()[-2:] == ["-", "-"]


def test_evaluate_runs_humaneval_end_to_end(tmp_path):
    torch.manual_seed(0)
    config = tiny_qwen2_config(len(TOKENIZER), hidden=32, layers=1, heads=2, max_positions=2048, pad_token_id=TOKENIZER.pad_token_id,
                               eos_token_id=TOKENIZER.eos_token_id, bos_token_id=None)
    folder = tmp_path / "policy"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            "model=tiny", f"model.name_or_path={folder}", "data=humaneval", f"data.path={HUMANEVAL}", "eval.limit=3",
            "eval.n=2", "eval.k=2", "rollout.max_new_tokens=4", "device=cpu", "reward.sandbox.timeout_seconds=2",
        ])
    report = evaluate(cfg, tmp_path)
    result = report["results"]["humaneval"]
    assert (result["num_problems"], result["n"], result["k"]) == (3, 2, 2)
    assert result["greedy_pass@1"] == result["pass@1"] == result["pass@k"] == 0.0  # 4 random characters solve nothing
    assert report["reward_errors"] == {"humaneval": 0} and [p["id"] for p in report["problems"]["humaneval"]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert json.loads((tmp_path / "eval.json").read_text()) == report
