import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

from rlvr.data.arithmetic import ArithmeticTask, make_example
from rlvr.data.prompts import PromptEncoder
from rlvr.evaluate import evaluate, load_checkpoint_weights, pass_at_k, score_problems, summarise
from rlvr.models.hf import HFModel
from rlvr.models.tiny import build_char_tokenizer, tiny_qwen2_config
from rlvr.rewards.exact import ExactAnswerReward
from rlvr.rollout.base import Generation, RolloutEngine

CONF = Path(__file__).parents[1] / "conf"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # A tiny model gains nothing from threads; on a busy machine they only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the unbiased pass@k estimator ---


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),  # = c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (5, 0, 3, 0.0),  # no correct sample
        (5, 4, 2, 1.0),  # n - c = 1 < k: every pair holds a correct one
        (4, 4, 4, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_enumerating_every_k_subset():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))  # samples 0..c-1 are the correct ones
                hits = sum(any(i < c for i in s) for s in subsets)
                assert pass_at_k(n, c, k) == pytest.approx(hits / len(subsets)), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not.
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert math.isfinite(pass_at_k(1000, 10, 500))


@pytest.mark.parametrize("n, c, k", [(4, 1, 5), (4, 1, 0), (4, 5, 2), (4, -1, 2)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(n, c, k)


# --- scoring with a scripted engine: hand-computed counts ---


class ScriptedEngine:
    """Answers each prompt with fixed texts: samples in turn from `sampled[prompt]`, greedy from `greedy[prompt]`."""

    def __init__(self, tokenizer, sampled, greedy):
        self.tok, self.sampled, self.greedy, self.calls = tokenizer, sampled, greedy, {}

    def generate(self, prompt_ids, max_new_tokens=None, greedy=False):
        out = []
        for ids in prompt_ids:
            prompt = self.tok.decode(ids)
            if greedy:
                text = self.greedy[prompt]
            else:
                i = self.calls[prompt] = self.calls.get(prompt, -1) + 1
                text = self.sampled[prompt][i]
            tokens = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            out.append(Generation(tokens, True))
        return out


def test_score_problems_counts_correct_samples_and_greedy():
    tok = build_char_tokenizer("0123456789+=;#")
    examples = [make_example([12, 34], "a"), make_example([1, 2, 3], "b")]  # answers 46 and 6
    engine = ScriptedEngine(
        tok,
        sampled={"12+34=": ["12+34=46#46", "#45", "#46"], "1+2+3=": ["#5", "#7", "no answer"]},
        greedy={"12+34=": "#46", "1+2+3=": "#60"},
    )
    problems = score_problems(examples, PromptEncoder(ArithmeticTask(), tok, bare=True), tok, engine, ExactAnswerReward(), n=3, chunk=1)
    assert problems == [
        {"id": "a", "correct": 2, "greedy_correct": True},
        {"id": "b", "correct": 0, "greedy_correct": False},
    ]
    summary = summarise(problems, n=3, k=2)
    assert summary["greedy_pass@1"] == pytest.approx(0.5)
    assert summary["pass@1"] == pytest.approx(2 / 6)
    assert summary["pass@k"] == pytest.approx((1.0 + 0.0) / 2)  # problem a: n - c = 1 < k
    assert (summary["num_problems"], summary["n"], summary["k"]) == (2, 3, 2)


# --- end to end on a tiny random model ---


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tok = build_char_tokenizer("0123456789+=;#")
    config = tiny_qwen2_config(len(tok), hidden=32, layers=1, heads=2, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id, bos_token_id=None)
    folder = tmp_path_factory.mktemp("tiny") / "policy"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def eval_config(model: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("evaluate", overrides=[
            "model=tiny", f"model.name_or_path={model}", "data=arithmetic", "data.val_size=6",
            "eval.n=4", "eval.k=2", "rollout.max_new_tokens=16", "device=cpu", *overrides,
        ])


def test_evaluate_writes_report(tiny_model, tmp_path):
    report = evaluate(eval_config(tiny_model), tmp_path)  # eval.output null: <run dir>/eval.json
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written == report
    assert {"model", "ckpt", "temperature", "max_new_tokens", "results", "problems"} <= set(written)
    result = written["results"]["arithmetic"]
    assert set(result) == {"num_problems", "n", "k", "greedy_pass@1", "pass@1", "pass@k"}
    assert (result["num_problems"], result["n"], result["k"]) == (6, 4, 2)
    for key in ("greedy_pass@1", "pass@1", "pass@k"):
        assert 0.0 <= result[key] <= 1.0
    assert result["pass@k"] >= result["pass@1"]
    problems = written["problems"]["arithmetic"]
    assert [p["id"] for p in problems] == [f"val-{i}" for i in range(6)]
    assert all(0 <= p["correct"] <= 4 for p in problems)
    assert result["pass@1"] == pytest.approx(sum(p["correct"] for p in problems) / 24)
    assert written["max_new_tokens"] == 16 and written["ckpt"] is None


def test_evaluate_limit_and_output(tiny_model, tmp_path):
    out = tmp_path / "sub" / "report.json"
    evaluate(eval_config(tiny_model, "eval.limit=2", "eval.n=2", "eval.k=1", f"eval.output={out}"), tmp_path)
    result = json.loads(out.read_text())["results"]["arithmetic"]
    assert (result["num_problems"], result["n"], result["k"]) == (2, 2, 1)
    assert not (tmp_path / "eval.json").exists()


def test_evaluate_rejects_n_below_k(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="eval.n must be an integer >= eval.k=4"):
        evaluate(eval_config(tiny_model, "eval.n=3", "eval.k=4"), tmp_path)


def test_checkpoint_weights_replace_the_model_folders(tiny_model, tmp_path):
    policy = HFModel(str(tiny_model)).load_policy()
    shifted = {"policy." + k: v + 0.5 for k, v in policy.state_dict().items()}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": shifted, "rlvr": {}}, ckpt)
    before = policy.model.norm.weight.detach().clone()
    load_checkpoint_weights(policy, ckpt)
    assert torch.equal(policy.model.norm.weight, before + 0.5)
    assert torch.equal(policy.model.embed_tokens.weight, shifted["policy.model.embed_tokens.weight"])
    # and through the config: the report names the checkpoint
    report = evaluate(eval_config(tiny_model, f"ckpt={ckpt}", "eval.limit=1"), tmp_path)
    assert report["ckpt"] == str(ckpt)


def test_mismatched_checkpoint_is_an_error(tiny_model, tmp_path):
    policy = HFModel(str(tiny_model)).load_policy()
    weights = {"policy." + k: v for k, v in policy.state_dict().items()}
    del weights["policy.model.norm.weight"]
    weights["policy.extra.weight"] = torch.zeros(1)
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"state_dict": weights}, ckpt)
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\].*unexpected \['extra.weight'\]"):
        evaluate(eval_config(tiny_model, f"ckpt={ckpt}"), tmp_path)

    reshaped = {"policy." + k: v for k, v in policy.state_dict().items()}
    reshaped["policy.model.norm.weight"] = torch.zeros(3)
    torch.save({"state_dict": reshaped}, ckpt)
    with pytest.raises(ValueError, match="size mismatch"):
        load_checkpoint_weights(policy, ckpt)

    torch.save({"weights": {}}, ckpt)
    with pytest.raises(ValueError, match="no 'state_dict'"):
        load_checkpoint_weights(policy, ckpt)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint_weights(policy, tmp_path / "absent.ckpt")


class FixedEngine(RolloutEngine):
    """A non-HF engine (as vLLM: no batch_size): answers "#0" to every prompt and records each call's size."""

    calls: list[int] = []

    def __init__(self, num_generations=8, temperature=1.0, top_p=1.0, max_new_tokens=16, **_other_engines_options):
        super().__init__(num_generations, temperature, top_p, max_new_tokens)

    def generate(self, prompt_ids, max_new_tokens=None, greedy=False):
        FixedEngine.calls.append(len(prompt_ids))
        tok = build_char_tokenizer("0123456789+=;#")
        return [Generation(tok("#0", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], True) for _ in prompt_ids]

    def update_weights(self, model, tokenizer=None):
        pass


def test_evaluate_runs_through_an_engine_without_a_batch_size(tiny_model, tmp_path):
    FixedEngine.calls = []
    report = evaluate(eval_config(tiny_model, f"rollout._target_={__name__}.FixedEngine"), tmp_path)
    assert not hasattr(FixedEngine(), "batch_size")
    assert FixedEngine.calls == [6, 6 * 4]  # every problem in one call: greedy, then n = 4 samples each
    assert report["results"]["arithmetic"]["num_problems"] == 6
