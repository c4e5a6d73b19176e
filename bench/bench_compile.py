"""Benchmark of `llm.compile` (workflow/llm/compiling.py) on SmolLM2-135M: eager against compiled
with an empty Inductor cache (cold) and with the cache the cold pass left (warm), each pass in its
own process (a warm job is a new process that finds the cache folder full), all in one run.

Workloads, on the engine's own functions, with the stages' settings for this CPU (LoRA r 8 on
q,k,v,o, dropout 0.05; `llm.dtype auto`: bf16 autocast with frozen linears in bf16 and eager
attention for training where the CPU has native bf16, else float32 and sdpa; sdpa without grad):
  sft    train.train_step with sft.sft_loss, micro-batch 4 (synthetic prompts of bench_sft, ~420 tokens)
  dmpo   train.train_step with preference.make_loss_fn("dmpo"), micro-batch 2, 1 chosen + 3 negatives
  score  scoring.candidate_logprobs without gradients, 4 samples x 20 candidates (the likelihood
         protocol's packed pass)
Per pass: CPU seconds of this process (torch.set_num_threads(--threads), Inductor's compile
workers off: compile_threads 1, so compilation is counted too); the first call holds the compile,
"compile s" = CPU s of all calls - calls x the steady median. tokens / CPU-s = tokens the forward
runs on (padding not counted) / the steady median. MFU (sft only): bench_sft's FLOP count / CPU s /
the matmul peak per CPU-second in the compute dtype, measured here. Then one steady step of each pass under
torch.profiler: the top operators by self CPU time. And AdamW's step on the LoRA parameters:
for-loop (torch's CPU default), foreach, fused.

    .venv/bin/python bench/bench_compile.py [--threads 1] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sft import CACHE, LORA, peak_cpu, step_flops, synthetic_examples  # noqa: E402

from workflow.llm import compiling, preference, scoring, sft, train  # noqa: E402
from workflow.llm.model import autocast, cast_frozen_linears, convert_base_model, load_model, resolve_dtype  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
WORKLOADS = ("sft", "score", "dmpo")


def model_for(model_dir, workload):
    base, tok = load_model(model_dir, device="cpu", dtype="auto", training=workload != "score")
    model = train.add_lora(base, LORA, seed=0)
    cast_frozen_linears(model, resolve_dtype("auto", "cpu"))
    if workload == "score":
        model.requires_grad_(False).eval()
    return model, tok


def batches(tok, workload, steps):
    """steps + 1 batches of the workload and the tokens each runs on."""
    n = {"sft": 4, "dmpo": 2, "score": 4}[workload]
    ex = synthetic_examples(tok, n * (steps + 1) * 21, seed=1)
    out = []
    for s in range(steps + 1):
        chunk = ex[s * n * 21:(s + 1) * n * 21]
        ps = [e["prompt"] for e in chunk[:n]]
        answers = [e["answer"] for e in chunk[n:]]
        if workload == "sft":
            ans = [e["answer"] for e in chunk[:n]]
            out.append(((ps, ans), sum(len(p) + len(a) - 1 for p, a in zip(ps, ans))))
        else:
            k = 4 if workload == "dmpo" else 20
            cands = [answers[i * k:(i + 1) * k] for i in range(n)]
            tokens = sum(len(p) + sum(len(a) - 1 for a in c) for p, c in zip(ps, cands))
            batch = (ps, cands, torch.zeros(n, k)) if workload == "dmpo" else (ps, cands)
            out.append((batch, tokens))
    return out


def run_pass(model_dir, workload, mode, cache, steps, threads):
    """One pass in this process: {cpu: [per call], tokens: [per call], profile: [...], breaks}."""
    torch.set_num_threads(threads)
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1  # compile in this process: its CPU time is counted
    model, tok = model_for(model_dir, workload)
    if mode != "eager":
        compiling.enable(model, cache)
    work = batches(tok, workload, steps)
    bf16 = lambda: autocast("cpu", "auto")  # noqa: E731  (bf16 where the CPU has it, else float32)
    if workload != "score":
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        scheduler = train.lr_schedule(optimizer, steps + 10, 0.0)
        loss_fn = sft.sft_loss if workload == "sft" else preference.make_loss_fn("dmpo", {"beta": 0.1, "gamma": 0.0})

        def call(batch):
            train.train_step(model, [batch], loss_fn, optimizer, scheduler, params, 1.0, bf16)
    else:
        def call(batch):
            with torch.no_grad(), bf16():
                scoring.candidate_logprobs(model, *batch)
    cpu = []
    for batch, _ in work:
        c = time.process_time()
        call(batch)
        cpu.append(time.process_time() - c)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call(work[-1][0])
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    top = [(e.key[:60], e.self_cpu_time_total / total) for e in events[:8]]
    result = {"cpu": cpu, "tokens": [t for _, t in work], "profile": top,
              "breaks": sum(compiling.graph_breaks().values())}
    if workload == "sft":  # bench_sft's FLOP count of the steady steps, per step
        width = sum(m.in_features if n.endswith("lora_A.default") else m.out_features
                    for n, m in model.named_modules() if n.endswith(("lora_A.default", "lora_B.default")))
        config = model.get_base_model().config
        result["flops"] = float(np.mean([step_flops(config, [{"prompt": p_, "answer": a} for p_, a in zip(*b)],
                                                    LORA["lora_r"], 1, width)["model"] for b, _ in work[1:]]))
    return result


def fp32_peak_cpu(n=2048, reps=3) -> float:
    """Best float32 matmul FLOP per CPU-second (the peak where the CPU lacks native bf16)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        c = time.process_time()
        a @ b
        best = max(best, 2 * n ** 3 / max(time.process_time() - c, 1e-9))
    return best


def adamw_rates(model_dir, reps=50):
    """Seconds per AdamW step on the LoRA parameters, per implementation."""
    model, _ = model_for(model_dir, "sft")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        opt.step()
        c = time.process_time()
        for _ in range(reps):
            opt.step()
        out[name] = (time.process_time() - c) / reps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=str(CACHE))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="steady calls per pass after the first")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--pass", dest="one_pass", default=None, help=argparse.SUPPRESS)  # workload:mode:cache
    args = p.parse_args()
    if args.one_pass:
        workload, mode, cache = args.one_pass.split(":", 2)
        print("RESULT " + json.dumps(run_pass(args.model_dir, workload, mode, cache, args.steps, args.threads)))
        return
    torch.set_num_threads(args.threads)
    if not (Path(args.model_dir) / "config.json").exists():
        convert_base_model("embedded", args.model_dir)
    cache = OUT / "compile-cache"
    shutil.rmtree(cache, ignore_errors=True)  # cold: an empty cache folder
    print(f"compute dtype {resolve_dtype('auto', 'cpu')} (llm.dtype auto on this CPU), "
          f"threads {args.threads}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other jobs "
          f"share the machine: CPU seconds, not wall, are compared), torch {torch.__version__}")
    results = {}
    for workload in args.workloads:
        for mode in ("eager", "cold", "warm"):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--steps", str(args.steps),
                                   "--model-dir", args.model_dir, "--pass", f"{workload}:{mode}:{cache}"],
                                  capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{workload} {mode} failed:\n{done.stderr[-3000:]}")
                continue
            results[workload, mode] = r = json.loads(line[0][len("RESULT "):])
            # each pass as it ends (a long run cut short keeps what it measured)
            print(f"  {workload} {mode}: {time.perf_counter() - t:.0f} s wall, CPU s per call "
                  f"{', '.join(f'{c:.1f}' for c in r['cpu'])}, tokens {r['tokens']}, graph breaks {r['breaks']}",
                  flush=True)
    dtype = resolve_dtype("auto", "cpu")
    peak = peak_cpu() if dtype == torch.bfloat16 else fp32_peak_cpu()
    print(f"{dtype} matmul peak {peak / 1e9:.0f} GFLOP per CPU-second")
    print(f"{'workload':8s} {'pass':6s} {'steady CPU s':>12s} {'tok/CPU-s':>9s} {'x eager':>7s} {'compile s':>9s} "
          f"{'breaks':>6s} {'MFU CPU':>8s}")
    for workload in args.workloads:
        eager = results.get((workload, "eager"))
        for mode in ("eager", "cold", "warm"):
            r = results.get((workload, mode))
            if r is None:
                continue
            steady = float(np.median(r["cpu"][1:]))
            rate = float(np.mean(r["tokens"][1:])) / steady
            ratio = rate / (float(np.mean(eager["tokens"][1:])) / float(np.median(eager["cpu"][1:]))) if eager else float("nan")
            compile_s = sum(r["cpu"]) - len(r["cpu"]) * steady
            mfu = ""
            if workload == "sft":
                flops = r.get("flops")
                mfu = "" if flops is None else f"{flops / steady / peak:8.1%}"
            print(f"{workload:8s} {mode:6s} {steady:12.2f} {rate:9.0f} {ratio:7.2f} {compile_s:9.1f} {r['breaks']:6d} {mfu:>8s}")
    for workload in args.workloads:
        for mode in ("eager", "warm"):
            r = results.get((workload, mode))
            if r:
                print(f"profile {workload} {mode}: " + "; ".join(f"{k} {v:.0%}" for k, v in r["profile"]))
    rates = adamw_rates(args.model_dir)
    print("AdamW step on the LoRA parameters (CPU ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
