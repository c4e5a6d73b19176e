"""Benchmark of DEALRec's effort scores (workflow/selection/effort.py): batched per-sample LoRA
gradient norms against one forward + backward per sample, on the embedded SmolLM2-135M-Instruct.

Data: `--n` train samples of the default data (results/ml-100k/data, seeded draw), open prompt, the
loss over all tokens and the authors' parameter subset (the last layer's v_proj lora_B) unless
--loss-tokens / --params say otherwise; a fresh LoRA (config sft block: r 8 on q, k, v, o).

Variants, each scoring the same samples, per llm dtype (`--dtypes`):
  batched        the stage's path: length-sorted batches of --batch-size, one forward and one
                 torch.autograd.grad per batch, per-sample norms from the LoRA layer's input and
                 output gradient; only the tracked matrix requires gradients
  loop           one forward + loss.backward() per sample, the norm read from .grad, same
                 requires_grad as batched (so the backward stops at the last layer as well)
  loop-all-lora  the same loop with every LoRA matrix trainable, as a freshly made PEFT model is
                 (what a straightforward per-sample loop computes: a backward through all layers)
Throughput is samples per CPU-second of this process (time.process_time: on a shared machine wall
time includes waiting for the CPU); wall figures are printed too. Agreement: the largest relative
difference between the batched and the loop norms (float32: within 1e-4; bfloat16 autocast rounds
every matmul output to 8 bits of mantissa, so padding and batch shape move norms by ~1e-2).

    .venv/bin/python bench/bench_effort.py [--threads 1] [--n 24] [--batch-size 8] [--dtypes auto float32]
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
from workflow.llm.model import convert_base_model  # noqa: E402
from workflow.llm.data import sft_examples  # noqa: E402
from workflow.selection import effort  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "out" / "base-model"
DATA = ROOT / "results" / "ml-100k" / "data"


def base_model() -> Path:
    built = ROOT / "results" / "models" / "base"
    if (built / "config.json").is_file():
        return built
    if not (CACHE / "config.json").is_file():
        convert_base_model("embedded", CACHE)
    return CACHE


def examples(tokenizer, cfg, n: int, seed: int) -> list[dict]:
    for name in ("samples", "items"):
        if not (DATA / f"{name}.parquet").is_file():
            raise SystemExit(f"{DATA / name}.parquet missing: build the default data first "
                             "(snakemake --cores 1 results/ml-100k/data/samples.parquet)")
    samples = pd.read_parquet(DATA / "samples.parquet")
    samples = samples[samples["split"] == "train"].sample(n, random_state=seed)
    items = pd.read_parquet(DATA / "items.parquet")
    return sft_examples(samples, items, tokenizer, "movie", cfg["llm"], "open")


def timed(fn) -> tuple[np.ndarray, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return np.asarray(out, dtype=np.float64), time.process_time() - cpu, time.perf_counter() - wall


def run_dtype(dtype: str, args, cfg) -> list[dict]:
    spec = {"llm": {**cfg["llm"], "dtype": dtype}, "sft": cfg["sft"], "domain": "movie", "prompt": "open",
            "selection": {"dealrec": {"effort": {"params": args.params, "loss_tokens": args.loss_tokens}}}}
    model, tokenizer, matrices, autocast = effort.prepare_model(base_model(), effort.settings(spec), seed=0)
    data = examples(tokenizer, cfg, args.n, args.seed)
    prompts, answers = [e["prompt"] for e in data], [e["answer"] for e in data]
    losses = effort.loss_fn(args.loss_tokens)
    effort.batch_grad_norms(model, matrices, losses, prompts[:2], answers[:2], autocast)  # warm-up
    batched = timed(lambda: effort.effort_scores(model, matrices, losses, data, args.batch_size, autocast))
    loop = timed(lambda: effort.effort_loop(model, matrices, losses, prompts, answers, autocast).numpy())
    for name, p in model.named_parameters():  # every LoRA matrix trainable, as after get_peft_model
        p.requires_grad_("lora_" in name)
    loop_all = timed(lambda: effort.effort_loop(model, matrices, losses, prompts, answers, autocast).numpy())
    tokens = np.mean([len(p) + len(a) for p, a in zip(prompts, answers)])
    rows = []
    for name, (norms, cpu, wall) in (("batched", batched), ("loop", loop), ("loop-all-lora", loop_all)):
        rows.append({"dtype": dtype, "variant": name, "samples_per_cpu_s": args.n / cpu, "samples_per_s": args.n / wall,
                     "max_rel_diff_vs_batched": float(np.max(np.abs(norms - batched[0]) / batched[0])),
                     "cpu_s": cpu, "tokens": tokens})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=24, help="samples scored by each variant")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtypes", nargs="+", default=["auto", "float32"])
    p.add_argument("--params", default="last_v_proj_B", choices=effort.PARAM_SUBSETS)
    p.add_argument("--loss-tokens", default="all", choices=effort.LOSS_TOKENS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = workflow_config.load()
    rows = [row for dtype in args.dtypes for row in run_dtype(dtype, args, cfg)]
    table = pd.DataFrame(rows)
    for dtype, part in table.groupby("dtype", sort=False):
        base = part.set_index("variant")["samples_per_cpu_s"]
        table.loc[part.index, "batched_speedup"] = base["batched"] / part["samples_per_cpu_s"]
    print(f"effort scores, {args.n} samples (~{table['tokens'].iloc[0]:.0f} tokens each), params {args.params}, "
          f"loss over {args.loss_tokens} tokens, batch {args.batch_size}, {args.threads} thread(s)")
    print(table.drop(columns=["tokens"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
