"""Evaluate a policy on the validation split: greedy pass@1, sampled pass@1 and unbiased pass@k.

    python -m rlvr.evaluate model=tiny model.name_or_path=outputs/run/policy eval.k=4
    python -m rlvr.evaluate ckpt=outputs/run/checkpoints/last.ckpt model=qwen0.5b data=math500 eval.k=8 eval.n=16
    python -m rlvr.evaluate model=smollm2_135m data=humaneval eval.n=0   # greedy pass@1 only (code runs in the sandbox)

Writes a JSON report (eval.output, default <hydra run dir>/eval.json) and prints a small table.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlvr.batch import Example
from rlvr.data.checks import checked_examples
from rlvr.data.prompts import PromptEncoder
from rlvr.models.hf import resolve_device

log = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn without replacement from n (c of them correct) is
    correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), as a product so large n does not overflow."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k needs integers, got n={n!r}, c={c!r}, k={k!r}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def load_checkpoint_weights(policy: torch.nn.Module, path: str | Path) -> None:
    """Copy the `policy.*` weights of an rlvr Lightning checkpoint into `policy`; every key must match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt: no checkpoint file {path}")
    # Lightning checkpoints also hold numpy RNG states, which weights_only loading refuses: trusted files only.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"ckpt {path} is not a Lightning checkpoint: it has no 'state_dict'")
    weights = {k[len("policy.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
    if not weights:
        raise ValueError(f"ckpt {path} has no 'policy.*' weights (keys: {list(checkpoint['state_dict'])[:5]})")
    expected = set(policy.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"ckpt {path} does not match the model config's policy: missing {missing[:5]} ({len(missing)} in all), "
            f"unexpected {unexpected[:5]} ({len(unexpected)} in all). Is `model=` the model that was trained?"
        )
    try:
        policy.load_state_dict(weights, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"ckpt {path} does not match the model config's policy: {exc}") from exc


def score_problems(
    examples: list[Example], encode: PromptEncoder, tokenizer: Any, engine: Any, reward: Any, n: int, chunk: int,
    tally: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Per problem: how many of n samples are correct (n = 0: none are drawn, "correct" is None), and whether the
    greedy completion is. Samples the reward could not score (scored 0 under reward.on_error=zero) are added to
    tally["reward_errors"] when a tally is given."""
    results = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        prompts = encode.batch(part)
        greedy = engine.generate(prompts, greedy=True)
        _, greedy_correct, errors = reward(_decode(tokenizer, greedy), part)
        per_problem = [None] * len(part)
        if n:
            sampled = engine.generate([p for p in prompts for _ in range(n)])
            _, sampled_correct, sampled_errors = reward(_decode(tokenizer, sampled), [e for e in part for _ in range(n)])
            per_problem, errors = [int(c) for c in sampled_correct.view(len(part), n).sum(-1)], errors + sampled_errors
        if tally is not None:
            tally["reward_errors"] = tally.get("reward_errors", 0) + errors
        for i, example in enumerate(part):
            results.append({"id": example.id, "correct": per_problem[i], "greedy_correct": bool(greedy_correct[i])})
        log.info("evaluated %d / %d problems", start + len(part), len(examples))
    return results


def _decode(tokenizer: Any, generations: list[Any]) -> list[str]:
    return tokenizer.batch_decode([g.token_ids for g in generations], skip_special_tokens=True)


def summarise(problems: list[dict[str, Any]], n: int, k: int) -> dict[str, Any]:
    """Greedy pass@1, and over the n samples pass@1 and unbiased pass@k (None when n = 0: greedy only)."""
    count = len(problems)
    return {
        "num_problems": count,
        "n": n,
        "k": k,
        "greedy_pass@1": sum(p["greedy_correct"] for p in problems) / count,
        "pass@1": sum(p["correct"] for p in problems) / (count * n) if n else None,
        "pass@k": sum(pass_at_k(n, p["correct"], k) for p in problems) / count if n else None,
    }


def format_table(results: dict[str, dict[str, Any]], k: int) -> str:
    def cell(value: float | None, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"

    header = f"{'data':<14}{'problems':>9}{'n':>5}{'k':>5}{'greedy@1':>10}{'pass@1':>9}{f'pass@{k}':>9}"
    rows = [
        f"{name:<14}{r['num_problems']:>9}{r['n']:>5}{r['k']:>5}{cell(r['greedy_pass@1'], 10)}{cell(r['pass@1'], 9)}{cell(r['pass@k'], 9)}"
        for name, r in results.items()
    ]
    return "\n".join([header, *rows])


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    k = cfg.eval.k
    n = k if cfg.eval.n is None else cfg.eval.n
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"eval.k must be an integer >= 1, got {k!r}")
    if not isinstance(n, int) or (n < k and n != 0):
        raise ValueError(f"eval.n must be an integer >= eval.k={k} (the estimator draws k of the n samples), or 0 for "
                         f"greedy decoding only, got {n!r}")
    limit = cfg.eval.limit
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"eval.limit must be a positive integer or null, got {limit!r}")
    torch.manual_seed(cfg.seed)

    model = instantiate(cfg.model)
    data = instantiate(cfg.data)
    reward = instantiate(cfg.reward)
    engine = instantiate(cfg.rollout, temperature=cfg.eval.temperature)
    tokenizer = model.load_tokenizer()
    encoder = PromptEncoder(data, tokenizer, model.bare_prompts)
    # Training's row checks on the evaluated rows, before the weights load (data.bad_answers / long_prompts apply).
    examples = checked_examples(data.val()[:limit], "validation", data, encoder.batch, reward,
                                getattr(model, "context_length", lambda: None)(), engine.max_new_tokens)
    if not examples:
        raise ValueError(f"data {data.name!r}: val() returned no problems")
    policy = model.load_policy()
    if cfg.ckpt is not None:
        load_checkpoint_weights(policy, cfg.ckpt)
    policy.to(resolve_device(cfg.device)).eval()
    engine.update_weights(policy, tokenizer)

    # About one generate batch of samples per step; an engine without a batch size (vLLM schedules its own) gets all.
    batch_size = getattr(engine, "batch_size", None)
    chunk = max(1, batch_size // max(n, 1)) if batch_size else len(examples)
    tally: dict[str, int] = {}
    problems = score_problems(examples, encoder, tokenizer, engine, reward, n, chunk, tally)
    results = {data.name: summarise(problems, n, k)}
    if tally.get("reward_errors"):
        log.warning("%d completions could not be scored (reward.on_error=zero scored them 0)", tally["reward_errors"])

    report = {
        "model": model.name_or_path,
        "ckpt": None if cfg.ckpt is None else str(cfg.ckpt),
        "temperature": cfg.eval.temperature,
        "max_new_tokens": engine.max_new_tokens,
        "seed": cfg.seed,
        "results": results,
        "reward_errors": {data.name: tally.get("reward_errors", 0)},
        "problems": {data.name: problems},
    }
    output = Path(cfg.eval.output) if cfg.eval.output is not None else run_dir / "eval.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(format_table(results, k))
    print(f"wrote {output}")
    return report


@hydra.main(version_base="1.3", config_path="pkg://rlvr.conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    report = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    result = next(iter(report["results"].values()))
    return result["greedy_pass@1"] if result["pass@k"] is None else result["pass@k"]


if __name__ == "__main__":
    main()
