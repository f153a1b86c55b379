"""Peak memory and step time of the log-prob passes with a large vocabulary: plain (full logits) vs chunked.

    python benchmarks/vocab_memory.py [--vocab 151936] [--prompts 8] [--group 8] [--steps 1] [--chunks 1024]

The embedded model (`model=tiny`, rlvr:tiny-arith) with its vocabulary resized to --vocab tokens (Qwen2.5's
151,936 by default; the new rows get transformers' mean-resizing init, every other weight is unchanged) trains
--steps default steps (--prompts x --group roll-outs) with `algorithm.logprob_chunk_tokens=null` (the plain path:
[samples, tokens, vocab] logits) and with each of --chunks. Each setting runs in its own process, one after the
other, so each peak is its own: the step's peak resident memory (memory/peak_gb, Linux VmHWM reset at the step's
start; on a GPU CUDA's max allocated) and the step time, median over the steps after the first when --steps > 1.
`--vocab 0` keeps the model's own vocabulary (17 tokens): the chunks' cost where logits are cheap.
The plain path at the full vocabulary needs about 20 GB of free memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def resized_model(vocab: int, folder: Path) -> Path:
    """The embedded model with `vocab` tokens (0: as shipped), saved once so that every setting trains the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr.models.hf import load_tokenizer, resolve_path

    source = resolve_path("rlvr:tiny-arith")
    model = AutoModelForCausalLM.from_pretrained(source)
    if vocab:
        torch.manual_seed(0)  # the new rows are drawn at random
        model.resize_token_embeddings(vocab)
    model.save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    return folder


def worker(args: argparse.Namespace, chunk: str, model: str) -> dict:
    from hydra import compose, initialize_config_module

    from rlvr.metrics import read_metrics, series
    from rlvr.train import build_module, build_trainer

    overrides = [
        "model=tiny", f"model.name_or_path={model}", f"algorithm.logprob_chunk_tokens={chunk}",
        f"algorithm.prompts_per_step={args.prompts}", f"rollout.num_generations={args.group}", f"max_steps={args.steps}",
        "val_every=100000", "checkpoint_every=100000", "export_policy=false", f"trainer.accelerator={args.device}",
    ]
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="rlvr-vocab-run-"))
    module = build_module(cfg)
    build_trainer(cfg, run_dir, module.algorithm.optimizer_steps_per_rollout).fit(module)
    rows = read_metrics(run_dir)
    return {"step_s": series(rows, "time/step_s"), "update_s": series(rows, "time/update_s"),
            "peak_gb": series(rows, "memory/peak_gb"), "tokens": series(rows, "train/completion_length")}


def summary(result: dict) -> tuple[float, float, float]:
    """Median step and update time and the peak, over the steps after the first (warm-up) when there are several."""
    steady = slice(1, None) if len(result["step_s"]) > 1 else slice(None)
    return (statistics.median(result["step_s"][steady]), statistics.median(result["update_s"][steady]),
            max(result["peak_gb"][steady]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936, help="resize the vocabulary to this many tokens (0: keep 17)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--chunks", nargs="+", default=["1024"], help="values of algorithm.logprob_chunk_tokens to compare")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--skip-plain", action="store_true", help="only the chunked runs (where the plain path does not fit)")
    parser.add_argument("--worker", nargs=2, metavar=("CHUNK", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args, *args.worker)), flush=True)
        return
    model, results = str(resized_model(args.vocab, Path(tempfile.mkdtemp(prefix="rlvr-vocab-")))), {}
    for chunk in [*([] if args.skip_plain else ["null"]), *args.chunks]:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", chunk, model], capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"logprob_chunk_tokens={chunk} failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
        results[chunk] = json.loads(lines[-1][len("RESULT "):])
        step, update, peak = summary(results[chunk])
        print(f"logprob_chunk_tokens={chunk:5s}: step {step:6.2f} s, update {update:6.2f} s, peak {peak:6.2f} GB "
              f"(completion tokens {results[chunk]['tokens']}, process {time.perf_counter() - started:.0f} s)", flush=True)
    plain_step, _, plain_peak = summary(results["null"]) if "null" in results else (float("nan"),) * 3
    vocab = args.vocab or "17 (the model's own)"
    print(f"\nvocabulary {vocab}, {args.prompts} prompts x {args.group} roll-outs, {args.device}, "
          f"{'median of steps 2..' + str(args.steps) if args.steps > 1 else 'one step'}")
    print("| logprob_chunk_tokens | step s | update s | peak GB | step / plain | peak / plain |")
    print("| --- | --- | --- | --- | --- | --- |")
    for chunk, result in results.items():
        step, update, peak = summary(result)
        print(f"| {chunk} | {step:.2f} | {update:.2f} | {peak:.2f} | {step / plain_step:.2f} | {peak / plain_peak:.2f} |")

if __name__ == "__main__":
    main()
