"""How well a model follows the embedded task's format, and how often it is right: greedy and sampled.

    python benchmarks/arithmetic_format.py model=smollm2_135m                                 # before training
    python benchmarks/arithmetic_format.py model=smollm2_135m model.name_or_path=RUN/policy model.gguf_file=null
    python benchmarks/arithmetic_format.py model=smollm2_135m data=arithmetic_smollm data.val_size=200 --problems 48 \
        --samples 8 --prefix-steps 1 --task-shots 5 --out studies/smollm_regime/terms3_max9_taskshots.json

Takes the same overrides as `python -m rlvr.train` (model, data, rollout...). For the first --problems
validation problems it prints the share of completions in the checkable format (`a+b=c;...#N`, see
`rlvr.data.arithmetic.in_format`) and the accuracy, once greedy and once sampled (--samples per problem), the
share of sampled groups with no correct answer (all-negative: GRPO's zero-signal groups), and how the preset's
judge grades the sampled completions. --prefix-steps k... (k >= 1; the sampled row is
k = 0) also samples with the first k reference steps given after the prompt, as guided roll-outs get them (problems
with more than k steps), and reports the accuracy per k and per term count, the way `rlvr.sft` reports it for the
warm-start (`sft_report.json`). --task-shots N (a diagnostic) replaces the task's worked examples by its first N
training problems, to tell a model that cannot add from one that copies the shipped shots' shape.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from rlvr.data.arithmetic import in_format, target_text
from rlvr.data.prompts import PromptEncoder
from rlvr.data.steps import step_texts


def by_terms(examples, correct: torch.Tensor) -> dict[int, float]:
    """Accuracy per number of terms."""
    tiers: dict[int, list[float]] = {}
    for e, c in zip(examples, correct.tolist(), strict=True):
        tiers.setdefault(len(e.steps) + 1, []).append(c)
    return {n: round(sum(v) / len(v), 3) for n, v in sorted(tiers.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prefix-steps", type=int, nargs="*", default=[], help="also sample with the first k >= 1 reference steps given")
    parser.add_argument("--task-shots", type=int, default=0,
                        help="diagnostic: replace the task's worked examples by its first N training problems (0: keep them)")
    parser.add_argument("--out", help="also write the report to this JSON file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()  # overrides may come before or after the options
    if any(k < 1 for k in args.prefix_steps):
        parser.error(f"--prefix-steps takes k >= 1 (k = 0 is the sampled row), got {args.prefix_steps}")
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    torch.manual_seed(cfg.seed)
    model, data, reward, engine = (instantiate(cfg[k]) for k in ("model", "data", "reward", "rollout"))
    judge = instantiate(cfg.judge) if cfg.get("judge") else None
    tokenizer, policy = model.load_tokenizer(), model.load_policy().eval()
    engine.update_weights(policy, tokenizer)
    examples = data.val()[: args.problems]
    if args.task_shots:  # shots from the task's own distribution (training split, so never a validation problem)
        data.worked_examples = tuple((e.prompt, target_text(e)) for e in data.train()[: args.task_shots])
    encoder = PromptEncoder(data, tokenizer, model.bare_prompts)
    report = {"model": model.name_or_path, "overrides": args.overrides, "problems": len(examples), "samples": args.samples,
              "task_shots": args.task_shots, "threads": torch.get_num_threads()}
    for mode, repeat, greedy in (("greedy", 1, True), ("sampled", args.samples, False)):
        rows = [e for e in examples for _ in range(repeat)]
        generations = engine.generate([encoder(e) for e in rows], greedy=greedy)
        texts = tokenizer.batch_decode([g.token_ids for g in generations], skip_special_tokens=True)
        _, correct, _ = reward(texts, rows)
        report[mode] = {"format": sum(map(in_format, texts)) / len(texts), "accuracy": correct.float().mean().item(),
                        "by_terms": by_terms(rows, correct), "examples": texts[:3]}
    groups = correct.view(len(examples), args.samples)
    report["sampled"]["all_negative_groups"] = (~groups.any(dim=1)).float().mean().item()
    if judge is not None:  # the judge must grade what the reward grades: right answer and right steps agree
        verdicts = judge(rows, [step_texts(t, e.step_style, e.step_separator) for e, t in zip(rows, texts, strict=True)])
        clean = torch.tensor([v.first_error is None for v in verdicts])
        report["sampled"]["judge"] = {"no_error_found": clean.float().mean().item(),
                                      "agrees_with_reward": (clean == correct.bool().cpu()).float().mean().item()}
    for k in args.prefix_steps:  # the continuation of the first k reference steps, as a guided roll-out writes it
        rows = [e for e in examples if len(e.steps) > k for _ in range(args.samples)]
        prefixes = [tokenizer(e.solution_prefix(k), add_special_tokens=False)["input_ids"] for e in rows]
        generations = engine.generate([encoder(e) + p for e, p in zip(rows, prefixes, strict=True)])
        texts = tokenizer.batch_decode([p + list(g.token_ids) for p, g in zip(prefixes, generations, strict=True)],
                                       skip_special_tokens=True)  # guidance included, as the reward sees it in training
        _, correct, _ = reward(texts, rows)
        report[f"prefix_{k}"] = {"accuracy": correct.float().mean().item(), "by_terms": by_terms(rows, correct),
                                 "format": sum(map(in_format, texts)) / len(texts), "completions": len(rows)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
