"""A GRPO step of a 0.5B-1.5B model on one GPU in bf16: roll-out tokens/s, update and step time, peak memory, for
eager vs compiled roll-out (`rollout.decode`) and plain vs chunked log-probs (`algorithm.logprob_chunk_tokens`),
each a real `rlvr.train` run in its own process, one after the other; ratios against eager + plain (the old step).

    python benchmarks/gpu_step.py --model Qwen/Qwen2.5-0.5B [--model Qwen/Qwen2.5-1.5B] [--steps 4]
    python benchmarks/gpu_step.py --random-init qwen0.5b qwen1.5b --tokenizer DIR   # no hub: the architecture, random weights
    python benchmarks/gpu_step.py --random-init tiny --tokenizer DIR --trainer default --steps 2 --prompts 2 --group 2 \
        --new-tokens 8 data.val_size=2   # a CPU smoke of the script itself

Random weights time the same matrix work as real ones, but sample every completion to the full budget (no EOS):
the tokens/s are comparable, the step times are those of full-length completions. Median over steps 2..N.
The shared prefix is on in every variant (the default since it was measured: README).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rlvr.algorithm import AlgorithmConfig
from rlvr.metrics import read_metrics, series

ROOT = Path(__file__).resolve().parents[1]
# Public Qwen2.5 configurations (hidden, intermediate, layers, heads, key/value heads); vocabulary 151,936.
# "tiny": the same vocabulary on a 2-layer body, to smoke-test this script on a CPU.
QWEN25 = {"qwen0.5b": (896, 4864, 24, 14, 2), "qwen1.5b": (1536, 8960, 28, 12, 2), "tiny": (64, 128, 2, 4, 2)}
# name: (rollout.decode, chunked log-probs?)
VARIANTS = {"eager-plain": ("eager", False), "compiled-plain": ("compiled", False),
            "eager-chunked": ("eager", True), "compiled-chunked": ("compiled", True)}
BASELINE = "eager-plain"
HAS_CHUNKS = "logprob_chunk_tokens" in {f.name for f in dataclasses.fields(AlgorithmConfig)}


def random_qwen(name: str, tokenizer: str, out: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, intermediate, layers, heads, kv_heads = QWEN25[name]
    config = Qwen2Config(vocab_size=151936, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out / name)
    for file in Path(tokenizer).iterdir():  # the model folder carries its tokenizer
        (out / name / file.name).write_bytes(file.read_bytes())
    return out / name


def overrides_for(variant: str, args: argparse.Namespace) -> list[str]:
    decode, chunked = VARIANTS[variant]
    out = [f"rollout.decode={decode}", f"rollout.max_cache_tokens={args.new_tokens + args.prompt_tokens}"]
    if HAS_CHUNKS:
        out.append(f"algorithm.logprob_chunk_tokens={args.chunk_tokens if chunked else 'null'}")
    return out


def run(model_path: str, variant: str, args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    overrides = [
        "model=qwen0.5b", f"model.name_or_path={model_path}", "data=gsm8k", f"data.path={args.data}", "data.val_size=8",
        "judge=none", f"rollout.max_new_tokens={args.new_tokens}", f"algorithm.prompts_per_step={args.prompts}",
        f"rollout.num_generations={args.group}", f"max_steps={args.steps}", "val_every=100000", "checkpoint_every=100000",
        "export_policy=false", f"trainer={args.trainer}", *overrides_for(variant, args), f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]
    done = subprocess.run([sys.executable, "-m", "rlvr.train", *overrides], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"run failed ({' '.join(overrides)}):\n{done.stderr[-3000:]}")
    rows = read_metrics(run_dir)
    steady = slice(1, None) if args.steps > 1 else slice(None)
    result = {key: statistics.median(series(rows, metric)[steady]) for key, metric in [
        ("tokens/s", "time/generated_tokens_per_s"), ("rollout s", "time/rollout_s"), ("update s", "time/update_s"),
        ("step s", "time/step_s"), ("peak GB", "memory/peak_gb"), ("completion tokens", "train/completion_length")]}
    result["compiles"] = max(series(rows, "rollout/compiles"), default=0.0)
    result["first step s"] = series(rows, "time/step_s")[0]  # holds the compiles
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="*", default=[])
    parser.add_argument("--random-init", nargs="*", default=[], choices=sorted(QWEN25))
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (needed with --random-init)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="algorithm.logprob_chunk_tokens of the chunked variants")
    parser.add_argument("--prompt-tokens", type=int, default=256,
                        help="prompt room in the compiled roll-out's cache (rollout.max_cache_tokens = this + --new-tokens): "
                             "GSM8K prompts (at most 242 tokens in the first 2,000, SmolLM2 tokenizer) compile once, in step 1")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--trainer", default="gpu", help="trainer preset (default: gpu, bf16-mixed)")
    parser.add_argument("overrides", nargs="*", help="more rlvr.train overrides")
    args = parser.parse_args()
    if args.random_init and not args.tokenizer:
        parser.error("--random-init needs --tokenizer DIR")
    variants = args.variants if HAS_CHUNKS else [v for v in args.variants if not VARIANTS[v][1]]
    if variants != args.variants:
        print("algorithm.logprob_chunk_tokens does not exist in this checkout: the chunked variants are left out")
    import torch

    out = Path(tempfile.mkdtemp(prefix="gpu-step-"))
    models = [(m, m) for m in args.model] + [(name, str(random_qwen(name, args.tokenizer, out))) for name in args.random_init]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{device}, trainer={args.trainer}, {args.prompts} prompts x {args.group} roll-outs x {args.new_tokens} new tokens, "
          f"shared prefix, chunked = {args.chunk_tokens} tokens, median of steps 2..{args.steps}")
    print("| model | roll-out | log-probs | tokens/s | roll-out s | update s | step s | peak GB | compiles | step 1 s |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("(ratio rows: tokens/s and peak are variant / eager-plain; the seconds are eager-plain / variant, > 1 is faster)")
    for label, path in models:
        results = {}
        for variant in variants:
            results[variant] = r = run(path, variant, args, out / f"{Path(label).name}-{variant}")
            decode, chunked = VARIANTS[variant]
            print(f"| {label} | {decode} | {'chunked' if chunked else 'plain'} | {r['tokens/s']:.0f} | {r['rollout s']:.2f} | "
                  f"{r['update s']:.2f} | {r['step s']:.2f} | {r['peak GB']:.1f} | {r['compiles']:.0f} | {r['first step s']:.1f} |",
                  flush=True)
        base = results.get(BASELINE)
        for variant, r in results.items():
            if base is None or variant == BASELINE:
                continue
            decode, chunked = VARIANTS[variant]
            print(f"| {label} | {decode} / eager | {'chunked' if chunked else 'plain'} / plain | "
                  f"{r['tokens/s'] / base['tokens/s']:.2f}x | {base['rollout s'] / r['rollout s']:.2f}x | "
                  f"{base['update s'] / r['update s']:.2f}x | {base['step s'] / r['step s']:.2f}x | "
                  f"{r['peak GB'] / base['peak GB']:.2f}x | | |", flush=True)


if __name__ == "__main__":
    main()
