"""Benchmark of DEALRec's influence scores (workflow/selection/influence.py) for every train sample
of the default data on the trained surrogate (results/ml-100k/surrogate), with the settings of
config/config.yaml (`selection.dealrec.influence`) unless --depth says otherwise.

Prints the seconds (wall and CPU) of the three phases: v (the mean training-loss gradient), LiSSA
(`depth` single-sample Hessian-vector products) and the scores (per-sample gradients by vmap, dot
h), the LiSSA convergence trace (||h_t - h_{t-1}|| and ||h_t|| every depth / 20 steps), and the
per-sample gradients per CPU-second batched (vmap over --grad-batch) against a Python loop of
single-sample gradients on --loop-n samples.

    .venv/bin/python bench/bench_influence.py [--threads 1] [--depth 1000] [--loop-n 500]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workflow import config as workflow_config  # noqa: E402
from workflow.selection import influence as inf  # noqa: E402
from workflow.surrogate import load_surrogate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "ml-100k"


def gradient_throughput(loss, params, data, n: int, chunk: int) -> tuple[float, float, float]:
    """(batched samples/CPU-s, loop samples/CPU-s, max abs difference) on the first n samples."""
    part = tuple(t[:n] for t in data)
    cpu = time.process_time()
    batched = inf.flat_rows(inf.per_sample_grads(loss, params, *(t[:chunk] for t in part)))
    for start in range(chunk, n, chunk):
        batched = torch.cat([batched, inf.flat_rows(inf.per_sample_grads(
            loss, params, *(t[start : start + chunk] for t in part)))])
    batched_cpu = time.process_time() - cpu
    cpu = time.process_time()
    loop = torch.stack([inf.flat(torch.func.grad(loss)(params, *(t[k : k + 1] for t in part))) for k in range(n)])
    loop_cpu = time.process_time() - cpu
    return n / batched_cpu, n / loop_cpu, float((batched - loop).abs().max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--depth", type=int, default=None, help="LiSSA steps (default: config/config.yaml)")
    p.add_argument("--loop-n", type=int, default=500)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = workflow_config.load()["selection"]["dealrec"]["influence"]
    if args.depth:
        settings = {**settings, "depth": args.depth}
    surrogate = load_surrogate(RESULTS / "surrogate")
    samples = pd.read_parquet(RESULTS / "data" / "samples.parquet", columns=["sample_id", "split", "history", "target"])

    wall, cpu = time.perf_counter(), time.process_time()
    table, trace, timings = inf.compute_influence(surrogate, samples, settings, args.seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"influence of {len(table)} train samples, params {settings['params']}, depth {settings['depth']}, "
          f"damping {settings['damping']}, scale {settings['scale']}, {args.threads} thread(s)")
    print(f"total {wall:.1f}s wall, {cpu:.1f}s CPU; phases (wall): {timings}")
    print("LiSSA convergence:")
    print(pd.DataFrame(trace).assign(relative=lambda d: d["diff_norm"] / d["estimate_norm"]).to_string(
        index=False, float_format=lambda v: f"{v:.3e}"))
    quantiles = np.quantile(table["influence"], [0, 0.01, 0.25, 0.5, 0.75, 0.99, 1])
    print("influence quantiles (0, 1, 25, 50, 75, 99, 100 %):", np.round(quantiles, 5).tolist())

    model = surrogate.model.eval()
    _, data = inf.encode_train(surrogate, samples)
    params = inf.parameter_subset(model, settings["params"])
    batched, loop, diff = gradient_throughput(inf.sasrec_batch_loss(model), params, data, args.loop_n,
                                              settings["grad_batch"])
    print(f"per-sample gradients: batched {batched:.0f}/CPU-s, loop {loop:.0f}/CPU-s ({batched / loop:.1f}x), "
          f"max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
