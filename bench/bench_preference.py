"""Benchmark: one preference-training step (DMPO objective, the real `train.train_step`: forward,
backward, clipping, AdamW) with the shared-prefix scorer against the naive per-pair concatenation
(every candidate its own prompt+answer sequence: the prompt repeated 1+k times, as TRL's DPO trainer
and the papers' code do), at k = 3 and k = 15 negatives.

Model: the embedded SmolLM2-135M with LoRA r=8 on q,k,v,o (the default config), bf16 autocast, the
frozen linear weights in bf16 and the attention implementation the trainer uses (llm.attention
auto), as `workflow.llm.preference` runs it. Inputs: the 325-token LLaRA prompt of
bench/bench_scoring.py (20 real MovieLens titles), a micro-batch of --batch samples with 1 + k
answers each, reference log-probs fixed. Time: CPU seconds of the step (best of --repeats, the two
variants interleaved in one process). Memory: one fresh process per variant, peak RSS added by one
step over the loaded model (VmHWM reset through /proc/self/clear_refs). Both variants' loss on the
same parameters (dropout off) is printed: they compute the same objective.

    .venv/bin/python bench/bench_preference.py [--threads 1] [--repeats 2] [--batch 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scoring import build_inputs, ensure_model, reset_peak, vm_kb  # noqa: E402

VARIANTS = ("packed", "concat")


def setup(args, warm_up: bool = True):
    """(step(variant) -> CPU seconds, loss_without_dropout(variant), prompt tokens) for a LoRA model
    as the preference trainer builds it."""
    import torch

    from workflow.llm import preference, scoring, train
    from workflow.llm.model import autocast, cast_frozen_linears, load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model_dir, device="cpu", dtype="auto", attention=args.attention)
    model = train.add_lora(model, {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, seed=0)
    cast_frozen_linears(model, torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    scheduler = train.lr_schedule(optimizer, 1000, 0.0)
    prompt_ids, answer_ids = build_inputs(tokenizer, args.batch, 1 + args.k)
    reference = torch.zeros(args.batch, 1 + args.k)  # fixed: the reference never changes in training
    batch = (prompt_ids, answer_ids, reference)
    cfg = {"beta": 0.1, "gamma": 0.0}
    loss_fns = {"packed": preference.make_loss_fn("dmpo", cfg),
                "concat": preference.make_loss_fn("dmpo", cfg, scorer=scoring.concat_candidate_logprobs)}
    amp = lambda: autocast("cpu", "auto")  # noqa: E731

    def step(variant):
        cpu = time.process_time()
        train.train_step(model, [batch], loss_fns[variant], optimizer, scheduler, params, 1.0, amp)
        return time.process_time() - cpu

    def loss_without_dropout(variant):
        model.eval()
        with torch.no_grad(), amp():
            loss = float(loss_fns[variant](model, batch)[0])
        model.train()
        return loss

    if warm_up:  # kernels, allocator (not before a memory measurement: freed memory stays resident)
        for variant in VARIANTS:
            step(variant)
    return step, loss_without_dropout, len(prompt_ids[0])


def time_worker(args) -> None:
    step, loss_without_dropout, prompt_tokens = setup(args)
    losses = {v: loss_without_dropout(v) for v in VARIANTS}  # same parameters: the same objective
    times = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            times[variant].append(step(variant))
    print(json.dumps({"cpu_s": {v: min(t) for v, t in times.items()}, "loss": losses,
                      "prompt_tokens": prompt_tokens}))


def memory_worker(args) -> None:
    step, _, _ = setup(args, warm_up=False)
    base_kb = vm_kb("VmRSS")
    exact = reset_peak()
    step(args.variant)
    peak_kb = vm_kb("VmHWM") if exact else __import__("resource").getrusage(0).ru_maxrss
    print(json.dumps({"added_mb": (peak_kb - base_kb) / 1024, "exact": exact}))


def run_worker(args, kind: str, k: int, variant: str = "packed") -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--k", str(k), "--variant", variant, "--batch",
           str(args.batch), "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--model-dir", str(args.model_dir), "--attention", args.attention]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} k={k} {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmrec-bench-smollm2")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust CPU seconds on a shared CPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=2, help="samples per micro-batch (the default config's)")
    p.add_argument("--ks", type=int, nargs="+", default=[3, 15])
    p.add_argument("--attention", default="auto", help="llm.attention of both variants (auto: what training uses)")
    p.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, default="packed", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return (time_worker if args.worker == "time" else memory_worker)(args)

    ensure_model(args.model_dir)
    print("| k | packed CPU s | concat CPU s | speed-up | packed +MB | concat +MB | loss packed / concat |")
    print("|---|---|---|---|---|---|---|")
    for k in args.ks:
        timing = run_worker(args, "time", k)
        memory = {v: run_worker(args, "memory", k, v)["added_mb"] for v in VARIANTS}
        sec, loss = timing["cpu_s"], timing["loss"]
        print(f"| {k} | {sec['packed']:.2f} | {sec['concat']:.2f} | {sec['concat'] / sec['packed']:.1f}x | "
              f"{memory['packed']:.0f} | {memory['concat']:.0f} | {loss['packed']:.4f} / {loss['concat']:.4f} |",
              flush=True)
    print(f"\nprompt {timing['prompt_tokens']} tokens, micro-batch {args.batch}, threads {args.threads}, "
          f"attention {args.attention}, "
          f"one optimizer step (DMPO, LoRA r=8, bf16 autocast); time: best of {args.repeats} CPU seconds, "
          "variants interleaved; memory: peak RSS added by the step, one process per variant")


if __name__ == "__main__":
    main()
