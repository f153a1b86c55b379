"""A GRPO step of a 0.5B-1.5B model on one GPU in bf16: roll-out tokens/s, update and step time, peak memory,
with the shared-prefix forward on and off (the baseline), each a real `rlvr.train` run, one after the other.

    python benchmarks/gpu_step.py --model Qwen/Qwen2.5-0.5B [--model Qwen/Qwen2.5-1.5B] [--steps 4]
    python benchmarks/gpu_step.py --random-init qwen0.5b qwen1.5b --tokenizer DIR   # no hub: the architecture, random weights

Random weights time the same matrix work as real ones, but sample every completion to the full budget (no EOS):
the tokens/s are comparable, the step times are those of full-length completions. Median over steps 2..N.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rlvr.metrics import read_metrics, series

ROOT = Path(__file__).resolve().parents[1]
# Public Qwen2.5 configurations (hidden, intermediate, layers, heads, key/value heads); vocabulary 151,936.
QWEN25 = {"qwen0.5b": (896, 4864, 24, 14, 2), "qwen1.5b": (1536, 8960, 28, 12, 2)}


def random_qwen(name: str, tokenizer: str, out: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, intermediate, layers, heads, kv_heads = QWEN25[name]
    config = Qwen2Config(vocab_size=151936, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out / name)
    for file in Path(tokenizer).iterdir():  # the model folder carries its tokenizer
        (out / name / file.name).write_bytes(file.read_bytes())
    return out / name


def run(model_path: str, shared: bool, args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    overrides = [
        "model=qwen0.5b", f"model.name_or_path={model_path}", "data=gsm8k", f"data.path={args.data}", "data.val_size=8",
        "judge=none", f"rollout.max_new_tokens={args.new_tokens}", f"algorithm.prompts_per_step={args.prompts}",
        f"rollout.num_generations={args.group}", f"max_steps={args.steps}", "val_every=100000", "checkpoint_every=100000",
        "export_policy=false", f"trainer={args.trainer}", f"algorithm.shared_prefix={shared}", f"rollout.shared_prefix={shared}",
        f"hydra.run.dir={run_dir}", *args.overrides,
    ]
    done = subprocess.run([sys.executable, "-m", "rlvr.train", *overrides], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"run failed ({' '.join(overrides)}):\n{done.stderr[-3000:]}")
    rows = read_metrics(run_dir)
    steady = slice(1, None)
    return {key: statistics.median(series(rows, metric)[steady]) for key, metric in [
        ("tokens/s", "time/generated_tokens_per_s"), ("rollout s", "time/rollout_s"), ("update s", "time/update_s"),
        ("step s", "time/step_s"), ("peak GB", "memory/peak_gb"), ("completion tokens", "train/completion_length")]}


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
    parser.add_argument("--trainer", default="gpu", help="trainer preset (default: gpu, bf16-mixed)")
    parser.add_argument("overrides", nargs="*", help="more rlvr.train overrides")
    args = parser.parse_args()
    import torch

    out = Path(tempfile.mkdtemp(prefix="gpu-step-"))
    models = [(m, m) for m in args.model] + [(name, str(random_qwen(name, args.tokenizer, out))) for name in args.random_init]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{device}, trainer={args.trainer}, {args.prompts} prompts x {args.group} roll-outs x {args.new_tokens} new tokens, "
          f"median of steps 2..{args.steps}")
    print("| model | forward | tokens/s | roll-out s | update s | step s | peak GB |\n| --- | --- | --- | --- | --- | --- | --- |")
    for label, path in models:
        results = {}
        for shared in (False, True):
            results[shared] = run(path, shared, args, out / f"{Path(label).name}-{shared}")
            r = results[shared]
            print(f"| {label} | {'shared prefix' if shared else 'plain'} | {r['tokens/s']:.0f} | {r['rollout s']:.2f} | "
                  f"{r['update s']:.2f} | {r['step s']:.2f} | {r['peak GB']:.1f} |", flush=True)
        plain, shared = results[False], results[True]
        print(f"| {label} | shared / plain | {shared['tokens/s'] / plain['tokens/s']:.2f}x | | "
              f"{plain['update s'] / shared['update s']:.2f}x faster | {plain['step s'] / shared['step s']:.2f}x faster | "
              f"{shared['peak GB'] / plain['peak GB']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
