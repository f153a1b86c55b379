"""Roll-out throughput: batched generation with KV cache vs one prompt at a time (the baseline), and the decoding
modes of `rollout=hf` (eager, static cache, compiled) against eager, same process.

    python benchmarks/rollout_batching.py [--model rlvr:tiny-arith] [--prompts 64] [--max-new-tokens 64]
    python benchmarks/rollout_batching.py --decode eager static compiled [--group 8] [--repeats 2]
    python benchmarks/rollout_batching.py --decode eager compiled --random-init qwen0.5b --tokenizer DIR \
        --prompts 8 --group 8 --max-new-tokens 256 --dtype bfloat16            # on a GPU: the roll-out of a GRPO step

With --decode, each mode's first call (where the compiled mode compiles) is timed apart, then the best of --repeats
calls gives its tokens/s; greedy tokens are compared with eager's, row by row. Prints the ratios. Ratios, not absolute
numbers, are what carry over between machines. Peak memory: CUDA max allocated, or the process's peak RSS.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rlvr.data.arithmetic import ArithmeticTask
from rlvr.metrics import PeakMemory
from rlvr.models.hf import HFModel
from rlvr.rollout.hf import HFEngine


def throughput(engine: HFEngine, prompts: list[list[int]], greedy: bool = False) -> tuple[float, list[list[int]]]:
    torch.manual_seed(0)
    start = time.perf_counter()
    generations = engine.generate(prompts, greedy=greedy)  # ends with the tokens on the CPU: nothing left in flight
    seconds = time.perf_counter() - start
    return sum(len(g.token_ids) for g in generations) / seconds, [g.token_ids for g in generations]


def compare_modes(args: argparse.Namespace, model: torch.nn.Module, tokenizer, prompts: list[list[int]]) -> None:
    device = next(model.parameters()).device
    peak = PeakMemory(device)
    rows = [p for p in prompts for _ in range(args.group)]  # G copies of each prompt: the shared prefill applies
    print(f"{len(prompts)} prompts x {args.group} x {args.max_new_tokens} new tokens, {device}, {model.dtype}, "
          f"torch threads {torch.get_num_threads()}")
    print("| decode | first call s | tokens/s | compiles | greedy rows equal to eager | peak GB |\n| --- | --- | --- | --- | --- | --- |")
    results, greedy_tokens = {}, {}
    for mode in args.decode:
        engine = HFEngine(num_generations=args.group, temperature=1.0, max_new_tokens=args.max_new_tokens,
                          batch_size=len(rows), decode=mode)
        engine.update_weights(model, tokenizer)
        peak.reset()
        start = time.perf_counter()
        _, greedy_tokens[mode] = throughput(engine, rows, greedy=True)  # warms up (compiles) too
        first = time.perf_counter() - start
        results[mode] = max(throughput(engine, rows)[0] for _ in range(args.repeats))
        same = sum(a == b for a, b in zip(greedy_tokens[mode], greedy_tokens[args.decode[0]]))
        print(f"| {mode} | {first:.1f} | {results[mode]:.0f} | {engine.compiles} | {same}/{len(rows)} | {peak.gb():.2f} |", flush=True)
    base = results[args.decode[0]]
    print(" ".join(f"{mode}/{args.decode[0]}: {value / base:.2f}x" for mode, value in results.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rlvr:tiny-arith")
    parser.add_argument("--random-init", help="a Qwen2.5 architecture with random weights (benchmarks/gpu_step.py), instead of --model")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random-init")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--decode", nargs="+", help="compare these rollout.decode modes (the first is the baseline)")
    parser.add_argument("--group", type=int, default=1, help="with --decode: roll-outs per prompt")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    if args.random_init:
        from gpu_step import random_qwen

        path = random_qwen(args.random_init, args.tokenizer, Path(tempfile.mkdtemp(prefix="rollout-bench-")))
        spec = HFModel(str(path), dtype=args.dtype)
    else:
        spec = HFModel(args.model, dtype=args.dtype)
    model, tokenizer = spec.load_policy(), spec.load_tokenizer()
    if torch.cuda.is_available():
        model.cuda()
    examples = ArithmeticTask(seed=7, train_size=args.prompts).train()[: args.prompts]
    prompts = [tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in examples]
    if args.decode:
        compare_modes(args, model, tokenizer, prompts)
        return
    results = {}
    for name, batch_size in (("one at a time (baseline)", 1), (f"batched x{args.prompts}", args.prompts)):
        engine = HFEngine(num_generations=1, temperature=1.0, max_new_tokens=args.max_new_tokens, batch_size=batch_size,
                          decode="eager")
        engine.update_weights(model, tokenizer)
        results[name] = throughput(engine, prompts)[0]
        print(f"{name:28s} {results[name]:9.1f} generated tokens/s")
    baseline, batched = results.values()
    print(f"speed-up: {batched / baseline:.1f}x  (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
