"""Benchmark of a rere step (workflow/llm/catalogue_rl.py: GRPO over the policy's 16-item beam across
the catalogue) against an sft step on the same samples, under the open prompt (titles) and the sid
prompt (semantic IDs), from the default's trained sft adapters, one thread.

Prints the CPU seconds of one step of 4 samples (forward and backward; rere's beam search and its
reference pass included) and the ratio rere / sft, all measured in this one run. What it says: how
much a rere run costs against the sft run of the same size (docs/catalogue.md, the catalogue_rl study).

    .venv/bin/python bench/bench_rere.py [--steps 2] [--threads 1] [--results results]
        [--open-adapter DIR] [--sid-adapter DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench_catalogue import cpu_seconds  # noqa: E402

BATCH = 4


def step_seconds(model, batches, loss_of, autocast) -> float:
    """CPU seconds per step (forward and backward under autocast, as train.py's loop runs a loss_fn),
    after one warm-up step."""
    def run(chunk):
        for batch in chunk:
            with autocast():
                loss = loss_of(model, batch)
            loss.backward()
            model.zero_grad(set_to_none=True)

    run(batches[:1])
    _, cpu, _ = cpu_seconds(lambda: run(batches[1:]))
    return cpu / (len(batches) - 1)


def compare(model_dir, samples_path, items_path, adapter, prompt, steps) -> tuple[float, float]:
    """(sft, rere) CPU seconds per step of BATCH samples under `prompt`, from `adapter`."""
    from workflow.config import validate_block
    from workflow.llm import catalogue_rl, sft
    from workflow.llm.catalogue import catalogue_answers
    from workflow.llm.inference import pad_id
    from workflow.llm.model import add_item_tokens, autocast, load_for_training
    from workflow.llm.data import preference_examples, sft_examples
    from workflow.llm.preference import with_defaults
    from workflow.semantic_ids import sid_tokens

    llm = validate_block("llm", {"device": "auto", "dtype": "auto", "attention": "auto"})
    items = pd.read_parquet(items_path)
    rows = pd.read_parquet(samples_path).query("split == 'train'").head(BATCH * (steps + 1))
    model, tokenizer, device, dtype = load_for_training(model_dir, llm)
    add_item_tokens(model, tokenizer, sid_tokens(items))
    model = catalogue_rl.attach_with_reference(model, adapter)
    cast = lambda: autocast(device, dtype)  # noqa: E731

    examples = sft_examples(rows, items, tokenizer, "movie", llm, prompt)
    sft_batches = [sft.collate(examples[i:i + BATCH]) for i in range(0, len(examples), BATCH)]
    sft_cpu = step_seconds(model, sft_batches, lambda m, b: sft.sft_loss(m, b)[0], cast)

    cfg = with_defaults("rere", {})
    answers = catalogue_answers(tokenizer, items["title"].astype(str), llm["max_title_tokens"])
    chosen = catalogue_rl.catalogue_examples(preference_examples(rows, items, tokenizer, "movie", llm, prompt),
                                             items["item_id"].astype(str).tolist())
    rere_batches = [catalogue_rl.collate(chosen[i:i + BATCH]) for i in range(0, len(chosen), BATCH)]
    loss_fn = catalogue_rl.make_loss_fn(cfg, answers, pad_id(tokenizer))  # as the preference stage builds it
    rere_cpu = step_seconds(model, rere_batches, lambda m, b: loss_fn(m, b)[0], cast)
    print(f"{prompt} prompt: sft {sft_cpu:.2f} CPU s per step of {BATCH}, rere (group {cfg['group_size']}) "
          f"{rere_cpu:.2f}: {rere_cpu / sft_cpu:.1f}x")
    return sft_cpu, rere_cpu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2, help="timed steps per method and prompt (after one warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--open-adapter", default=None, help="default: results/<dataset>/llm/sft-open-n256/random/adapter")
    p.add_argument("--sid-adapter", default=None, help="default: results/<dataset>/llm/sft-sid-n256/random/adapter")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    data, runs = results / args.dataset / "data", results / args.dataset / "llm"
    model_dir = results / "models" / "base"
    for prompt, items_name, adapter in (("open", "items.parquet", args.open_adapter),
                                        ("sid", "items_sid.parquet", args.sid_adapter)):
        adapter = Path(adapter or runs / f"sft-{prompt}-n256" / "random" / "adapter")
        needed = [model_dir, data / "samples.parquet", data / items_name, adapter]
        missing = [str(path) for path in needed if not path.exists()]
        if missing:
            print(f"{prompt} prompt skipped: missing {', '.join(missing)} (make run, or build the sft-{prompt}-n256 "
                  "run's adapter)")
            continue
        compare(model_dir, data / "samples.parquet", data / items_name, adapter, prompt, args.steps)


if __name__ == "__main__":
    main()
