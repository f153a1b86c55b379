"""How well a model follows the embedded task's format, and how often it is right: greedy and sampled.

    python benchmarks/arithmetic_format.py model=smollm2_135m                                 # before training
    python benchmarks/arithmetic_format.py model=smollm2_135m model.name_or_path=RUN/policy model.gguf_file=null

Takes the same overrides as `python -m rlvr.train` (model, data, rollout...). For the first --problems
validation problems it prints the share of completions in the checkable format (`a+b=c;...#N`, see
`rlvr.data.arithmetic.in_format`) and the accuracy, once greedy and once sampled (--samples per problem).
"""

from __future__ import annotations

import argparse
import json

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from rlvr.data.arithmetic import in_format
from rlvr.data.prompts import PromptEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()  # overrides may come before or after the options
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    torch.manual_seed(cfg.seed)
    model, data, reward, engine = (instantiate(cfg[k]) for k in ("model", "data", "reward", "rollout"))
    tokenizer, policy = model.load_tokenizer(), model.load_policy().eval()
    engine.update_weights(policy, tokenizer)
    examples = data.val()[: args.problems]
    prompts = PromptEncoder(data, tokenizer, model.bare_prompts).batch(examples)
    report = {"model": model.name_or_path, "problems": len(examples)}
    for mode, repeat, greedy in (("greedy", 1, True), ("sampled", args.samples, False)):
        generations = engine.generate([p for p in prompts for _ in range(repeat)], greedy=greedy)
        texts = tokenizer.batch_decode([g.token_ids for g in generations], skip_special_tokens=True)
        _, correct, _ = reward(texts, [e for e in examples for _ in range(repeat)])
        report[mode] = {"format": sum(map(in_format, texts)) / len(texts), "accuracy": correct.float().mean().item(),
                        "example": texts[0]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
