"""Benchmark of how the no-grad passes load the model: evaluation, the title embeddings and the
preference reference all run `evaluate.load_for_evaluation`, which (a) picks sdpa attention for
`llm.attention: auto` (training keeps eager on a bf16 CPU) and (b) stores the linear weights in the
compute dtype once (`model.cast_frozen_linears`) instead of autocast casting every fp32 weight at
every matmul, which at every generated token is most of a decode step's memory traffic.

Three loadings of the SFT-sized setting (embedded SmolLM2-135M + a freshly initialised LoRA adapter
on q, k, v, o; MovieLens-100K test samples with 20 candidates; bf16 autocast):

  eager, fp32 weights   what evaluation ran before (the training attention, autocast casts)
  sdpa, fp32 weights    the no-grad attention alone
  sdpa, bf16 linears    what `load_for_evaluation` gives now

Each runs the evaluation's passes: likelihood + generation from one prompt cache, then greedy
generation on the open prompt. Printed: CPU seconds per pass (the robust figure on a shared CPU;
use --threads 1 there), the speed-up against the first loading measured in this run, and how far
the results move (the cast must change nothing; the attention kernel only moves bf16 rounding).

    .venv/bin/python bench/bench_inference.py [--samples 32] [--threads 2] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench_evaluate import ensure_data, ensure_model, timed  # noqa: E402

LOADINGS = {  # name: (attention, pre-cast linear weights)
    "eager, fp32 weights": ("eager", False),
    "sdpa, fp32 weights": ("sdpa", False),
    "sdpa, bf16 linears (now)": ("sdpa", True),
}


def load(model_dir: Path, attention: str, precast: bool):
    from peft import LoraConfig, get_peft_model

    from workflow.llm.model import cast_frozen_linears, load_model

    model, tokenizer = load_model(model_dir, device="cpu", dtype="auto", attention=attention, training=False)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)  # non-zero B: the adapter changes the outputs
    model = get_peft_model(model, config).eval()
    model.requires_grad_(False)
    if precast:
        cast_frozen_linears(model, torch.bfloat16)
    return model, tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmrec-bench-smollm2")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmrec-bench-ml100k")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args()

    from workflow.llm import evaluate, inference
    from workflow.llm.model import autocast, resolve_dtype

    if resolve_dtype("auto", "cpu") != torch.bfloat16:
        print("this CPU has no fast bf16: evaluation runs fp32 without autocast, nothing to compare")
        return
    torch.set_num_threads(args.threads)
    model_dir = ensure_model(args.model_dir)
    samples_path, items_path = ensure_data(args.data_dir)
    samples = evaluate.read_samples(samples_path, ["test"]).head(args.samples).reset_index(drop=True)
    items = pd.read_parquet(items_path, columns=["item_id", "title"])
    llm = {"max_title_tokens": 24, "max_prompt_tokens": 512}
    bf16 = lambda: autocast("cpu", "bfloat16")  # noqa: E731
    print(f"threads {args.threads}, {len(samples)} test samples x 20 candidates, batch {args.batch_size}, "
          f"max_new_tokens {args.max_new_tokens}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    results = {}
    for name, (attention, precast) in LOADINGS.items():
        model, tokenizer = load(model_dir, attention, precast)
        inputs = evaluate.prompt_inputs(samples, items, tokenizer, "movie", llm)
        (logprob, _, answers), t_cand = timed(lambda: inference.prompt_passes(
            model, tokenizer, inputs["candidate_prompt"], inputs["answers"], max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, autocast=bf16))
        open_answers, t_open = timed(lambda: inference.greedy_answers(
            model, tokenizer, inputs["open_prompt"], args.max_new_tokens, args.batch_size, bf16))
        results[name] = (logprob, answers, open_answers, t_cand[1], t_open[1])

    first = next(iter(results.values()))
    print(f"{'loading':28s} {'lik+gen CPU s':>13s} {'open gen CPU s':>14s} {'total':>7s} {'speed-up':>8s} "
          f"{'max |d logp|':>12s} {'same answers':>12s}")
    previous = None
    for name, (logprob, answers, open_answers, cand, open_) in results.items():
        total, base_total = cand + open_, first[3] + first[4]
        diff = np.abs(logprob - first[0]).max()
        same = sum(a == b for a, b in zip(answers + open_answers, first[1] + first[2]))
        print(f"{name:28s} {cand:13.1f} {open_:14.1f} {total:7.1f} {base_total / total:7.2f}x "
              f"{diff:12.4f} {same:5d}/{2 * len(answers)}")
        if previous is not None and name.endswith("(now)"):
            # the cast only moves autocast's cast: results identical to the loading before it
            cast_diff = np.abs(logprob - previous[0]).max()
            print(f"  pre-cast vs fp32 weights, same attention: max |d logp| {cast_diff:.2g}, answers "
                  f"{'identical' if answers == previous[1] and open_answers == previous[2] else 'DIFFER'}")
        previous = (logprob, answers, open_answers)


if __name__ == "__main__":
    main()
