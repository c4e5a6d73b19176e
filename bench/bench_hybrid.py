"""Benchmark of the hybrid-prompt methods: an iLoRA training step (n experts) against a LLaRA step and
an SFT step at the same shapes, with peak memory, and iLoRA's evaluation (prompt cache, likelihood
of 20 candidates) against SFT's, per sample.

Model: the converted base model (results/models/base, or --model-dir); data: the default run's samples,
items and SASRec surrogate (results/ml-100k/..., built by `snakemake --cores all`), open prompt. Each
variant runs in its own subprocess (fresh model, seed 0; peak memory = the process's max RSS after
loading, measured from there) on the same train samples: `--steps` optimizer steps of `train_step`
(batch 4, accumulation 2, as the default config) after one warm-up step, every step hybrid; then
`--eval` test samples through `inference.prompt_passes` (likelihood only). Times are CPU seconds of the
process (on a shared machine wall time includes waiting for a core), one thread by default.

    .venv/bin/python bench/bench_hybrid.py [--threads 1] [--steps 4] [--eval 32] [--experts 4]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "results" / "ml-100k"
LLM = {"device": "cpu", "dtype": "auto", "max_title_tokens": 24, "max_prompt_tokens": 512, "attention": "auto"}
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "projector_hidden": None, "curriculum": "hybrid", "router": "resnet", "gate": "sequence", "router_lr_scale": 0.3,
        "lr": 5e-4, "weight_decay": 0.0}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(name: str, args) -> dict:
    import numpy as np
    import pandas as pd
    import torch

    from workflow.llm import evaluate, ilora, inference, llara, train
    from workflow.llm.model import autocast, cast_frozen_linears, load_for_evaluation, load_model, resolve_dtype
    from workflow.llm.data import sft_examples
    from workflow.llm.sft import collate, sft_loss

    torch.set_num_threads(args.threads)
    samples = pd.read_parquet(DATA / "data" / "samples.parquet")
    items = pd.read_parquet(DATA / "data" / "items.parquet", columns=["item_id", "title"])
    surrogate = DATA / "surrogate"
    train_rows = samples[samples["split"] == "train"].sample(8 * (args.steps + 1), random_state=0)
    test_rows = samples[samples["split"] == "test"].head(args.eval).reset_index(drop=True)
    amp = lambda: autocast("cpu", "auto")  # noqa: E731
    mode = name.split("-")[0]

    model, tokenizer = load_model(args.model_dir, device="cpu", dtype="auto", attention="auto")
    base_rss = max_rss_mb()
    if mode == "sft":
        examples = sft_examples(train_rows, items, tokenizer, "movie", LLM, "open")
        model = train.add_lora(model, LORA, 0)
        loss_fn, batch_of = sft_loss, collate
    else:
        method = "ilora" if mode == "ilora" else "llara"
        block = {**LORA, "n_experts": args.experts}
        if method == "llara":
            model = train.add_lora(model, block, 0)
        else:
            ilora.add_experts(model, block, args.experts, 0)
        item_table = llara.read_item_vectors(surrogate)
        cfg = llara.hybrid_config(method, block, item_table[1].shape[1], model.config.hidden_size)
        parts = llara.build_parts(cfg, tokenizer, surrogate, item_table)
        model.add_module("hybrid_projector", parts.projector)
        if parts.router is not None:
            model.add_module("ilora_router", parts.router)
        examples = llara.hybrid_examples(train_rows, items, tokenizer, "movie", LLM, "open", parts.marker_id)
        ids = [e["sample_id"] for e in examples]
        gates = dict(zip(ids, llara.gate_inputs("sequence", surrogate, ids, cfg["d"]))) if method == "ilora" else None
        loss_fn, batch_of = llara.make_loss_fn(parts, {"hybrid": True}), llara.collate_with(gates)
    cast_frozen_linears(model, resolve_dtype("auto", "cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4)
    scheduler = train.lr_schedule(optimizer, args.steps + 1, 0.0)
    step_times = []
    for step in range(args.steps + 1):
        chunk = examples[8 * step:8 * step + 8]
        micro = [batch_of(chunk[:4]), batch_of(chunk[4:])]
        start = time.process_time()
        train.train_step(model, micro, loss_fn, optimizer, scheduler, params, 1.0, amp)
        if step:  # the first step warms up allocators and kernels
            step_times.append(time.process_time() - start)
    train_peak = max_rss_mb() - base_rss
    del model, optimizer

    # evaluation: the trained parts are irrelevant to speed; fresh weights of the same shapes
    if mode == "sft":
        model, tokenizer = load_for_evaluation(args.model_dir, None, "cpu", "auto", "auto")
        model = train.add_lora(model, LORA, 0).eval()
        hooks, marker = None, None
    else:
        model, tokenizer = load_for_evaluation(args.model_dir, None, "cpu", "auto", "auto")
        if method == "ilora":
            ilora.add_experts(model, block, args.experts, 0)
        else:
            model = train.add_lora(model, block, 0)
        model.eval().requires_grad_(False)
        parts = llara.build_parts(cfg, tokenizer, surrogate, item_table)
        parts.projector.eval(), parts.router.eval() if parts.router is not None else None
        marker = llara.PLACEHOLDER
    inputs = evaluate.prompt_inputs(test_rows, items, tokenizer, "movie", LLM, marker)
    if mode != "sft":
        hooks = llara.evaluation_hooks(parts, model, test_rows, inputs["open_prompt"], "open", surrogate)
    start = time.process_time()
    inference.prompt_passes(model, tokenizer, inputs["open_prompt"], inputs["answers"], batch_size=8, autocast=amp,
                            sample_hooks=hooks)
    eval_time = time.process_time() - start
    return {"variant": name, "step_s": float(np.median(step_times)), "train_peak_mb": train_peak,
            "eval_s_per_sample": eval_time / len(test_rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--eval", type=int, default=32)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--model-dir", default=str(ROOT / "results" / "models" / "base"))
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    rows = {}
    for name in ("sft", "llara", "ilora"):
        cmd = [sys.executable, __file__, "--variant", name, "--threads", str(args.threads), "--steps", str(args.steps),
               "--eval", str(args.eval), "--experts", str(args.experts), "--model-dir", args.model_dir]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'variant':8} {'step CPU s':>11} {'train peak MB':>14} {'eval CPU s/sample':>18}")
    for name, r in rows.items():
        print(f"{name:8} {r['step_s']:11.2f} {r['train_peak_mb']:14.0f} {r['eval_s_per_sample']:18.3f}")
    print(f"ilora ({args.experts} experts) step / llara step: {rows['ilora']['step_s'] / rows['llara']['step_s']:.2f}x"
          f" (target <= 1.3x); llara step / sft step: {rows['llara']['step_s'] / rows['sft']['step_s']:.2f}x")
    print(f"ilora evaluation / sft evaluation per sample: "
          f"{rows['ilora']['eval_s_per_sample'] / rows['sft']['eval_s_per_sample']:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
