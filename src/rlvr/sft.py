"""Warm-start for the embedded default: supervised training of a tiny Qwen2 on reference solutions.

    python -m rlvr.sft --out src/rlvr/assets/tiny-arith      # rebuilds the shipped checkpoint (defaults = shipped)

The training problems are drawn with the task seed `--seed`; the RL data preset uses another seed, so RL
trains on problems the warm-start has not seen.

Reproducible: same arguments and seed, same weights (CPU). Prints per-difficulty accuracy, bare and
with the first k reference steps given, so one can check that guidance helps on the hard tier.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlvr.data.arithmetic import ArithmeticTask, final_answer, target_text
from rlvr.models.tiny import build_char_tokenizer, tiny_qwen2_config
from rlvr.rollout.hf import HFEngine
from rlvr.tensors import masked_mean, pad_sequences

ARITH_CHARS = "0123456789+=;#"


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + target_ids, [0] * len(prompt_ids) + [1] * len(target_ids)


def train(args: argparse.Namespace) -> None:
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    task = ArithmeticTask(min_terms=args.min_terms, max_terms=args.max_terms, max_value=args.max_value,
                          train_size=args.steps * args.batch_size, val_size=args.val_size, seed=args.seed)
    tokenizer = build_char_tokenizer(ARITH_CHARS)
    config = tiny_qwen2_config(len(tokenizer), hidden=args.hidden, layers=args.layers, heads=args.heads,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(config)
    print(f"tiny Qwen2: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    # The cosine runs over `schedule_steps`; stopping before its end leaves a deliberately unfinished
    # warm-start: it has learnt the format and some carrying, and errs often on long sums.
    horizon = args.schedule_steps or args.steps
    warmup = max(1, horizon // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, horizon) / horizon)))
    )
    examples = task.train()
    start = time.time()
    model.train()
    for step in range(args.steps):
        chunk = examples[step * args.batch_size : (step + 1) * args.batch_size]
        pairs = [encode_pair(tokenizer, e.prompt, target_text(e)) for e in chunk]
        ids, attention = pad_sequences([seq for seq, _ in pairs], tokenizer.pad_token_id, side="right")
        weights = pad_sequences([w for _, w in pairs], 0, side="right", width=ids.shape[1])[0].float()  # 1 on target tokens
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        loss = masked_mean(losses, weights[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
        if args.eval_every and step and step % args.eval_every == 0:
            model.eval()
            evaluate_tiers(model, tokenizer, task, temperature=1.0, prefix_steps=(0, 2))
            model.train()
    model.eval()
    report = evaluate_tiers(model, tokenizer, task, temperature=1.0, prefix_steps=(0, 1, 2, 3))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "sft_report.json").write_text(json.dumps({"args": vars(args), "sampled_accuracy": report}, indent=1))
    print(f"saved {out}")


@torch.no_grad()
def evaluate_tiers(model, tokenizer, task: ArithmeticTask, temperature: float, prefix_steps=(0,)) -> dict[str, dict[int, float]]:
    """Accuracy per number of terms, with the first k reference steps given as a prefix."""
    engine = HFEngine(num_generations=1, temperature=temperature, max_new_tokens=96, batch_size=256)
    engine.update_weights(model, tokenizer)
    val = task.val()
    report: dict[str, dict[int, float]] = {}
    for k in prefix_steps:
        rows = [e for e in val if len(e.steps) > k]
        texts = [e.prompt + e.solution_prefix(k) for e in rows]
        gens = engine.generate([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
        by_terms: dict[int, list[bool]] = {}
        for e, g in zip(rows, gens):
            answer = final_answer(tokenizer.decode(g.token_ids, skip_special_tokens=True))
            by_terms.setdefault(len(e.steps) + 1, []).append(answer == e.answer)
        report[f"prefix_{k}"] = {n: round(sum(v) / len(v), 3) for n, v in sorted(by_terms.items())}
        print(f"prefix {k} steps: " + "  ".join(f"{n} terms {a:.2f}" for n, a in report[f"prefix_{k}"].items()), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--schedule-steps", type=int, default=1500, help="length of the cosine learning-rate schedule (0: --steps)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--min-terms", type=int, default=2)
    parser.add_argument("--max-terms", type=int, default=5)
    parser.add_argument("--max-value", type=int, default=999)
    parser.add_argument("--val-size", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0, help="print tier accuracy every N steps (0: only at the end)")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
