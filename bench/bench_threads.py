"""Benchmark behind `threads_per_job`: on this CPU, do N one-thread jobs at once do more work than
one job on all N cores?

Workloads, as the LLM rules run them (embedded SmolLM2-135M, LoRA r=8 on q,k,v,o, bf16 autocast,
the 325-token prompt of bench/bench_scoring.py):
  train   one preference-training step (DMPO, packed scorer, k=3, micro-batch 4, the real
          `train.train_step`; bench/bench_preference.py builds it)
  score   no-grad candidate scoring of 8 prompts x 20 candidates (evaluation, reference log-probs)

For each workload, in one run: one worker process with --cores threads does --steps steps alone
(wall time W1), then --cores worker processes with one thread each do --steps steps each at the same
time (wall time Wn, the slowest worker). Printed: throughput of the parallel one-thread jobs over
the one multi-thread job, cores * W1 / Wn (> 1: run several one-thread jobs). Each worker warms up
first (one step, not timed). Run it on an idle machine: another load skews both sides.

    .venv/bin/python bench/bench_threads.py [--cores 2] [--steps 6] [--workloads train score]
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

from bench_scoring import build_inputs, ensure_model  # noqa: E402


def worker(args) -> None:
    """Time `args.steps` steps of one workload with `args.threads` threads; print JSON."""
    import torch

    from workflow.llm.model import autocast

    torch.set_num_threads(args.threads)
    if args.workload == "train":
        import bench_preference

        setup_args = argparse.Namespace(threads=args.threads, model_dir=args.model_dir, attention="auto",
                                        batch=4, k=3)
        step_fn, _, _ = bench_preference.setup(setup_args, warm_up=False)

        def step():
            step_fn("packed")
    else:
        import bench_inference

        from workflow.llm import scoring

        model, tokenizer = bench_inference.load(args.model_dir, "sdpa", precast=True)  # as evaluation loads
        prompt_ids, answer_ids = build_inputs(tokenizer, 8, 20)

        def step():
            with torch.no_grad(), autocast("cpu", "auto"):
                scoring.candidate_logprobs(model, prompt_ids, answer_ids)

    step()  # warm-up: kernels, allocator
    # barrier: the parallel workers time their steps only once all of them are warm
    barrier = Path(args.barrier)
    (barrier / str(os.getpid())).touch()
    while len(list(barrier.iterdir())) < args.n_workers:
        time.sleep(0.05)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    print(json.dumps({"wall_s": time.perf_counter() - start}))


def launch(args, workload: str, threads: int, barrier: str, n_workers: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", "--workload", workload, "--threads", str(threads),
           "--steps", str(args.steps), "--model-dir", str(args.model_dir), "--barrier", barrier,
           "--n-workers", str(n_workers)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)


def wall(process: subprocess.Popen) -> float:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"worker failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])["wall_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmrec-bench-smollm2")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--workloads", nargs="+", choices=["train", "score"], default=["train", "score"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", choices=["train", "score"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--barrier", help=argparse.SUPPRESS)
    p.add_argument("--n-workers", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    ensure_model(args.model_dir)
    print(f"{args.cores} cores, {args.steps} steps per job, load average {os.getloadavg()[0]:.1f}")
    print(f"{'workload':8s} {'1 job x ' + str(args.cores) + ' threads':>18s} {str(args.cores) + ' jobs x 1 thread':>18s} "
          f"{'throughput':>10s}")
    for workload in args.workloads:
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
            alone = wall(launch(args, workload, args.cores, one, 1))
            workers = [launch(args, workload, 1, many, args.cores) for _ in range(args.cores)]
            together = max(wall(w) for w in workers)
        print(f"{workload:8s} {alone:16.1f} s {together:16.1f} s {args.cores * alone / together:9.2f}x")


if __name__ == "__main__":
    main()
