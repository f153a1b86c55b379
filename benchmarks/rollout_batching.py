"""Roll-out throughput: batched generation with KV cache vs one prompt at a time (the baseline), same process.

    python benchmarks/rollout_batching.py [--model rlvr:tiny-arith] [--prompts 64] [--max-new-tokens 64]

Prints generated tokens/s for each and the speed-up ratio. Ratios, not absolute numbers, are what
carry over between machines.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlvr.data.arithmetic import ArithmeticTask
from rlvr.models.hf import HFModel
from rlvr.rollout.hf import HFEngine


def throughput(engine: HFEngine, prompts: list[list[int]]) -> float:
    torch.manual_seed(0)
    start = time.perf_counter()
    generations = engine.generate(prompts)
    seconds = time.perf_counter() - start
    return sum(len(g.token_ids) for g in generations) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rlvr:tiny-arith")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    spec = HFModel(args.model)
    model, tokenizer = spec.load_policy(), spec.load_tokenizer()
    examples = ArithmeticTask(seed=7, train_size=args.prompts).train()[: args.prompts]
    prompts = [tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in examples]
    results = {}
    for name, batch_size in (("one at a time (baseline)", 1), (f"batched x{args.prompts}", args.prompts)):
        engine = HFEngine(num_generations=1, temperature=1.0, max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        engine.update_weights(model, tokenizer)
        results[name] = throughput(engine, prompts)
        print(f"{name:28s} {results[name]:9.1f} generated tokens/s")
    baseline, batched = results.values()
    print(f"speed-up: {batched / baseline:.1f}x  (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
