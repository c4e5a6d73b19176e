"""Benchmark of SOFT's two costs on this CPU (workflow/llm/soft.py), measured in one run.

1. Self-distillation: answers per CPU-second of beam search (`soft.num_beams` beams, up to
   `max_new_tokens`, the top beam) on the sft backbone:
     loop (eval model)     one prompt at a time, a plain `generate` call (each beam encodes the
                           prompt) on the model as the evaluation loads it (adapter unmerged, bf16
                           linear weights, fp32 norms and embeddings under autocast): the baseline
     loop                  the same on the merged bf16 model the stage uses (`soft.generation_model`)
     loop+cache            one prompt at a time, the prompt encoded once and its cache repeated per beam
     batched               `--batch-size` prompts of similar length per `generate` call (left padding)
     batched+cache         batched, each prompt encoded once: what `python -m workflow.llm.soft distill` runs
     batched+cache x2      the same with twice the batch
     batched+cache (eval)  the stage's batching on the evaluation's model
   Target: batched (+cache) >= 3x the one-prompt-at-a-time loop. The answers of each way are
   compared with the baseline's (bf16 rounding and batching may move a near-tie between beams).
2. One SOFT epoch against one SFT epoch on the same examples: optimizer steps
   (`train.train_step`, micro-batches of `--train-batch`, fresh LoRA, the frozen linear weights in
   bf16 and the training attention, as the stages run) with SFT's loss on the true answers and with
   SOFT's mixed loss on the true + self-distilled answers sharing one prompt encoding (the packed
   scorer, C = 2). Target: SOFT <= 1.3x SFT. SOFT's epochs also measure the probe distance d
   (`probe_size` prompts answered by beam search with the no-grad attention, then embedded); its
   cost per epoch at the config's probe_size and the default budget is extrapolated from the
   measured per-answer and per-sample costs and printed as a second ratio.

Model: the converted base model (results/models/base; rule base_model) and the default sft
backbone's adapter when present (results/ml-100k/llm/sft-open-n256/random/adapter); data: the
first `--n-prompts` samples of the default run's 256 training samples (open prompt). Without the
default run's results: the embedded model and data as bench/bench_evaluate.py builds them, the
base model as the backbone and the first training samples.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_soft.py [--threads 1] [--n-prompts 24] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workflow.config import load as load_config
from workflow.llm import soft, train
from workflow.llm.model import autocast, cast_frozen_linears, load_for_evaluation, load_model, resolve_attention, resolve_dtype
from workflow.llm.data import read_training_samples
from workflow.llm.data import sft_examples
from workflow.llm.sft import collate as sft_collate, sft_loss
from workflow.selection import subset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
DATA = RESULTS / "ml-100k" / "data"
ADAPTER = RESULTS / "ml-100k" / "llm" / "sft-open-n256" / "random" / "adapter"
BUDGET = 256  # the default soft run's -n


def timed(fn):
    """(result, wall seconds, process CPU seconds) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def generation_ways(model, merged, tokenizer, prompts, cfg, batch_size, compute) -> dict[str, tuple]:
    """{way: (answers, wall s, CPU s)} (the ways of the module docstring)."""
    beam = dict(num_beams=cfg["num_beams"], max_new_tokens=cfg["max_new_tokens"], autocast=compute)

    def loop(m, cache):
        return lambda: [soft.beam_answers(m, tokenizer, [p], batch_size=1, prompt_cache=cache, **beam)[0]
                        for p in prompts]

    def batched(m, cache, size=batch_size):
        return lambda: soft.beam_answers(m, tokenizer, prompts, batch_size=size, prompt_cache=cache, **beam)

    ways = {"loop (eval model)": loop(model, False), "loop": loop(merged, False), "loop+cache": loop(merged, True),
            "batched": batched(merged, False), "batched+cache": batched(merged, True),
            "batched+cache x2": batched(merged, True, 2 * batch_size), "batched+cache (eval)": batched(model, True)}
    for m in (model, merged):
        soft.beam_answers(m, tokenizer, prompts[:2], batch_size=2, **beam)  # warm-up
    return {name: timed(fn) for name, fn in ways.items()}


def epoch_seconds(model_dir, llm, cfg, examples, collate, loss_fn, batch_size) -> tuple[float, float, int]:
    """(wall, CPU seconds, tokens processed) of one pass of optimizer steps over `examples` in
    micro-batches of `batch_size` (one micro-batch per step), after one warm-up step."""
    model, _ = load_model(model_dir, device="cpu", dtype=llm["dtype"], attention=llm["attention"])
    model = train.add_lora(model, cfg, seed=0)
    cast_frozen_linears(model, torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batches = [collate(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
    scheduler = train.lr_schedule(optimizer, len(batches) + 1, 0.0)
    compute = lambda: autocast("cpu", llm["dtype"])  # noqa: E731
    step = lambda b: train.train_step(model, [b], loss_fn, optimizer, scheduler, params, 1.0, compute)  # noqa: E731
    step(batches[0])
    rows, wall, cpu = timed(lambda: [step(b) for b in batches])
    return wall, cpu, int(sum(r["tokens"] for r in rows))


def default_run_inputs(model_dir: Path, seed: int, n: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """(model folder, the first n of the default run's training samples, items); without the
    default run's results, those bench/bench_evaluate.py builds (and the first n train samples)."""
    from bench_evaluate import ensure_data, ensure_model

    selection = RESULTS / "ml-100k" / "selection" / "random.parquet"
    if not (model_dir / "config.json").is_file():
        model_dir = ensure_model(Path(tempfile.gettempdir()) / "llmrec-bench-smollm2")
    if (DATA / "samples.parquet").is_file() and selection.is_file():
        samples = read_training_samples(DATA / "samples.parquet", selection)
        samples = samples[samples["sample_id"].isin(subset(selection, BUDGET, seed))].head(n)
        return model_dir, samples, pd.read_parquet(DATA / "items.parquet", columns=["item_id", "title"])
    samples_path, items_path = ensure_data(Path(tempfile.gettempdir()) / "llmrec-bench-ml100k")
    samples = pd.read_parquet(samples_path)
    samples = samples[samples["split"] == "train"].sort_values("sample_id").head(n).reset_index(drop=True)
    return model_dir, samples, pd.read_parquet(items_path, columns=["item_id", "title"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=str(RESULTS / "models" / "base"))
    p.add_argument("--adapter", default=str(ADAPTER), help="the sft backbone (the base model when missing)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-prompts", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default: the config's "
                                                                "evaluation.batch_size)")
    p.add_argument("--train-batch", type=int, default=None, help="micro-batch (default: the soft block's batch_size)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config()
    llm, cfg = config["llm"], config["soft"]
    batch_size = args.batch_size or config["evaluation"]["batch_size"]
    train_batch = args.train_batch or cfg["batch_size"]
    adapter = args.adapter if Path(args.adapter, "adapter_config.json").is_file() else None
    model_dir, samples, items = default_run_inputs(Path(args.model_dir), config["seed"], args.n_prompts)
    args.model_dir = str(model_dir)

    model, tokenizer = load_for_evaluation(args.model_dir, adapter, "cpu", llm["dtype"], llm["attention"])
    dtype = resolve_dtype(llm["dtype"], "cpu")
    if adapter:  # the stage's model: merged from the fp32 weights, then cast (run_distill)
        from peft import PeftModel

        plain, _ = load_model(args.model_dir, device="cpu", dtype=llm["dtype"], attention=llm["attention"],
                              training=False)
        merged = soft.generation_model(PeftModel.from_pretrained(plain, adapter), dtype, copy=False)
    else:
        merged = soft.generation_model(load_model(args.model_dir, device="cpu", dtype=llm["dtype"],
                                                  training=False)[0], dtype, copy=False)
    compute = lambda: autocast("cpu", llm["dtype"])  # noqa: E731
    examples = sft_examples(samples, items, tokenizer, "movie", llm, "open")
    prompts = [e["prompt"] for e in examples]
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"{len(prompts)} open prompts ({np.mean([len(x) for x in prompts]):.0f} tokens on average), backbone "
          f"{'sft adapter' if adapter else 'base model'}, {cfg['num_beams']} beams, up to {cfg['max_new_tokens']} "
          f"new tokens, {batch_size} prompts per batch")
    print("\n1. self-distillation")
    results = generation_ways(model, merged, tokenizer, prompts, cfg, batch_size, compute)
    del merged
    base_answers, _, base_cpu = results["loop (eval model)"]
    loop_cpu = results["loop"][2]
    print(f"{'way':21s} {'wall s':>7s} {'CPU s':>7s} {'ans/CPU-s':>9s} {'x baseline':>10s} {'x loop':>7s} "
          f"{'same answers':>12s}")
    for name, (answers, wall, cpu) in results.items():
        same = np.mean([a == b for a, b in zip(answers, base_answers)])
        print(f"{name:21s} {wall:7.1f} {cpu:7.1f} {len(prompts) / cpu:9.3f} {base_cpu / cpu:10.2f} "
              f"{loop_cpu / cpu:7.2f} {same:12.0%}")
    answers = results["batched+cache"][0]
    answer_cpu = results["batched+cache"][2] / len(prompts)

    # the probe's per-answer cost on a model loaded for training (its answers: beam search with the
    # no-grad attention, then embedded by the base model), as run_soft measures it
    trainee, _ = load_model(args.model_dir, device="cpu", dtype=llm["dtype"], attention=llm["attention"])
    trainee = train.add_lora(trainee, cfg, seed=0)
    cast_frozen_linears(trainee, torch.bfloat16)
    no_grad = resolve_attention(llm["attention"], "cpu", llm["dtype"], training=False)
    titles = np.zeros((len(prompts), trainee.config.hidden_size), dtype=np.float32)
    _, probe_wall, probe_cpu = timed(lambda: soft.probe_distance(
        trainee, tokenizer, prompts, titles, base=False, num_beams=cfg["num_beams"],
        max_new_tokens=cfg["max_new_tokens"], batch_size=batch_size, autocast=compute, dtype=dtype,
        implementation=no_grad))
    del trainee

    print(f"\n2. one epoch on {len(examples)} samples, micro-batches of {train_batch} "
          f"(attention {resolve_attention(llm['attention'], 'cpu', llm['dtype'])})")
    distilled = dict(zip(samples["sample_id"].astype(str), answers))
    soft_ex = soft.soft_examples(samples, items, distilled, tokenizer, "movie", llm, "open")
    sft_wall, sft_cpu, sft_tokens = epoch_seconds(args.model_dir, llm, cfg, examples, sft_collate, sft_loss, train_batch)
    soft_wall, soft_cpu, soft_tokens = epoch_seconds(args.model_dir, llm, cfg, soft_ex, soft.collate,
                                                     soft.mixed_loss_fn(lambda: 0.5), train_batch)
    print(f"{'objective':10s} {'wall s':>7s} {'CPU s':>7s} {'tokens':>7s} {'x SFT CPU':>9s}")
    print(f"{'sft':10s} {sft_wall:7.1f} {sft_cpu:7.1f} {sft_tokens:7d} {1:9.2f}")
    print(f"{'soft':10s} {soft_wall:7.1f} {soft_cpu:7.1f} {soft_tokens:7d} {soft_cpu / sft_cpu:9.2f}")
    n_probe = min(cfg["probe_size"], BUDGET)
    per_probe = probe_cpu / len(prompts)
    epoch_sft = sft_cpu / len(examples) * BUDGET
    epoch_soft = soft_cpu / len(examples) * BUDGET + n_probe * per_probe
    print(f"probe distance: {per_probe:.2f} CPU-s per probe answer ({probe_wall / len(prompts):.2f} s wall); "
          f"at probe_size {cfg['probe_size']} and {BUDGET} samples one SOFT epoch with its measurement is "
          f"{epoch_soft:.0f} CPU-s, {epoch_soft / epoch_sft:.2f}x the SFT epoch ({epoch_sft:.0f} CPU-s)")
    print(f"self-distillation of the {BUDGET} training prompts: {answer_cpu * BUDGET:.0f} CPU-s (batched+cache)")


if __name__ == "__main__":
    main()
