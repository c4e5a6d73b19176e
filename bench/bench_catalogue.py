"""Benchmark of the whole-catalogue protocol (workflow/llm/catalogue.py) on the default setting: the
embedded SmolLM2-135M, MovieLens-100K test samples, all 1,349 items' titles as the prefix tree, the
open prompt, bf16 autocast where the CPU has it, one thread.

Prints seconds per sample and the ratios, all measured in this one run:
- the tree-attention beam search at widths 20 and 50 (top 20 items);
- `transformers`' beam search (`generate`, num_beams = width, prefix_allowed_tokens_fn over the same
  prefix tree, summed log-probs: length_penalty 0) on the same prompts, one prompt at a time as the
  by-hand trial ran it, and the agreement of the two top-20 lists (share of common items);
- the likelihood protocol (20 stored candidates scored from the shared prompt encoding);
- under the open prompt (titles, with a trained open run's adapter) and the sid prompt, the recall of
  the exhaustive top 20 (a beam as wide as the catalogue) at several widths, and CPU seconds per
  sample;
- the sid prompt against the open prompt: prompt tokens per sample, and the seconds of one LoRA SFT
  step (batch 4, forward and backward) on each (needs results/<dataset>/data/items_sid.parquet, from
  `snakemake --cores 1 results/ml-100k/data/items_sid.parquet`).

    .venv/bin/python bench/bench_catalogue.py [--samples 8] [--threads 1] [--results results]
        [--open-adapter DIR] [--sid-adapter DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402


def cpu_seconds(fn):
    start_cpu, start = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - start_cpu, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--open-adapter", default=str(ROOT / "results/ml-100k/llm/sft-open-n256/random/adapter"),
                   help="an open run's adapter for the width trade-off over titles (the base model when absent)")
    p.add_argument("--sid-adapter", default=str(ROOT / "results/ml-100k/llm/sft-sid-n256/random/adapter"),
                   help="a sid run's adapter for the width trade-off (the base model when absent)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from bench_evaluate import ensure_data, ensure_model
    from workflow.llm import catalogue
    from workflow.llm.evaluate import prompt_inputs, ranked_items, read_samples
    from workflow.llm.inference import constrained_tokens_fn, encoded_passes, pad_id
    from workflow.llm.model import autocast, load_for_evaluation, model_device, resolve_dtype
    from workflow.llm.prompts import clipped_answer_ids, end_of_answer_id

    results = Path(args.results)
    model_dir = ensure_model(results / "models" / "base")
    data = results / args.dataset / "data"
    samples_path, items_path = (data / "samples.parquet", data / "items.parquet") if (data / "samples.parquet").is_file() \
        else ensure_data(ROOT / "results" / "bench" / args.dataset)
    llm = {"max_title_tokens": 24, "max_prompt_tokens": 512}
    model, tokenizer = load_for_evaluation(model_dir)
    device = model_device(model)
    cast = lambda: autocast(device, "auto")  # noqa: E731
    samples = read_samples(samples_path, ["test"]).head(args.samples)
    items = ranked_items(samples_path, items_path)
    inputs = prompt_inputs(samples, items, tokenizer, "movie", llm)
    prompts = inputs["open_prompt"]
    answers = [clipped_answer_ids(tokenizer, t, llm["max_title_tokens"]) for t in items["title"]]
    trie = catalogue.catalogue_trie(answers)
    n = len(prompts)
    print(f"{n} test samples, {len(items)} items, open prompt {np.mean([len(x) for x in prompts]):.0f} tokens, "
          f"{args.threads} thread(s), compute dtype {resolve_dtype('auto', device)} on {device}")

    ours = {}
    for width in (20, 50):
        ranked, cpu, wall = cpu_seconds(lambda: catalogue.beam_search(model, prompts, trie, width=width, top=20,
                                                                     pad_id=pad_id(tokenizer), batch_size=8,
                                                                     autocast=cast))
        ours[width] = (ranked, cpu)
        print(f"tree-attention beam search, width {width}: {cpu / n:.2f} CPU s/sample ({wall / n:.2f} s wall), "
              f"{ranked.steps} decoding steps")

    def hf(width):
        from transformers import GenerationConfig

        longest = max(len(a) for a in answers)
        config = GenerationConfig(do_sample=False, num_beams=width, num_return_sequences=width, length_penalty=0.0,
                                  early_stopping=True, max_new_tokens=longest, pad_token_id=pad_id(tokenizer),
                                  eos_token_id=[end_of_answer_id(tokenizer)])
        found = []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            with cast(), torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                     prefix_allowed_tokens_fn=constrained_tokens_fn([answers], ids.shape[1],
                                                                                    end_of_answer_id(tokenizer)))
            by_answer = {tuple(a): i for i, a in enumerate(answers)}
            end = end_of_answer_id(tokenizer)
            rows = []
            for row in out:  # each answer up to its end-of-answer token (padding after it)
                tokens = row[ids.shape[1]:].tolist()
                rows.append(tuple(tokens[:tokens.index(end) + 1]) if end in tokens else tuple(tokens))
            found.append([by_answer[r] for r in rows if r in by_answer][:20])
        return found

    hf_found, hf_cpu, hf_wall = cpu_seconds(lambda: hf(20))
    overlap = np.mean([len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(ours[20][0].items, hf_found)])
    top1 = np.mean([bool(a) and bool(b) and a[0] == b[0] for a, b in zip(ours[20][0].items, hf_found)])
    print(f"transformers generate, 20 beams, prefix_allowed_tokens_fn: {hf_cpu / n:.2f} CPU s/sample "
          f"({hf_wall / n:.2f} s wall); its top 20 shared with ours {overlap:.2f}, same first item {top1:.2f}")
    print(f"ratio (transformers / tree attention, CPU s per sample, width 20): {hf_cpu / ours[20][1]:.1f}x")

    answers_20 = inputs["answers"]
    _, lik_cpu, _ = cpu_seconds(lambda: encoded_passes(model, tokenizer, prompts, answers_20, batch_size=8, autocast=cast))
    print(f"likelihood protocol (20 candidates): {lik_cpu / n:.2f} CPU s/sample; catalogue width 20 / likelihood: "
          f"{ours[20][1] / lik_cpu:.1f}x, width 50 / width 20: {ours[50][1] / ours[20][1]:.1f}x")

    del model
    width_tradeoff(model_dir, samples_path, items_path, args.open_adapter, llm, min(n, 4), "open", (20, 50, 100, 200))
    sid_items_path = data / "items_sid.parquet"
    if not sid_items_path.is_file():
        print(f"(no {sid_items_path}: the sid comparison is skipped)")
        return
    width_tradeoff(model_dir, samples_path, sid_items_path, args.sid_adapter, llm, min(n, 4), "sid", (5, 10, 20, 50))
    step_costs(model_dir, samples_path, items_path, sid_items_path, llm)


def width_tradeoff(model_dir, samples_path, items_path, adapter, llm, n, prompt, widths) -> None:
    """Recall of the exhaustive top 20 (a beam as wide as the catalogue) and CPU s per sample at
    several widths, under `prompt`: titles of many lengths (open), or IDs of one length (sid: no
    length bias mixes in)."""
    from workflow.llm import catalogue
    from workflow.llm.evaluate import prompt_inputs, ranked_items, read_samples
    from workflow.llm.inference import pad_id
    from workflow.llm.model import autocast, load_for_evaluation, model_device
    from workflow.llm.prompts import clipped_answer_ids
    from workflow.semantic_ids import sid_tokens

    items = ranked_items(samples_path, items_path)
    adapter = adapter if adapter and Path(adapter).is_dir() else None
    model, tokenizer = load_for_evaluation(model_dir, adapter,
                                           item_tokens=sid_tokens(items) if prompt == "sid" else ())
    device = model_device(model)
    samples = read_samples(samples_path, ["test"]).head(n)
    prompts = prompt_inputs(samples, items, tokenizer, "movie", llm)[f"{prompt}_prompt"]
    trie = catalogue.catalogue_trie([clipped_answer_ids(tokenizer, t, llm["max_title_tokens"]) for t in items["title"]])
    search = lambda width: catalogue.beam_search(model, prompts, trie, width=width, top=20,  # noqa: E731
                                                 pad_id=pad_id(tokenizer), batch_size=4,
                                                 autocast=lambda: autocast(device, "auto"))
    exact, exact_cpu, _ = cpu_seconds(lambda: search(len(items)))
    print(f"{prompt} prompt ({'adapter ' + str(adapter) if adapter else 'base model'}), {n} samples: exhaustive "
          f"top 20 (width {len(items)}) {exact_cpu / n:.1f} CPU s/sample")
    for width in widths:
        ranked, cpu, _ = cpu_seconds(lambda: search(width))
        recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ranked.items, exact.items)])
        print(f"  width {width}: recall of the exhaustive top 20 {recall:.2f}, {cpu / n:.2f} CPU s/sample")


def step_costs(model_dir, samples_path, items_path, sid_items_path, llm) -> None:
    """Prompt tokens and the seconds of one LoRA SFT step, open prompt against sid prompt."""
    from workflow.config import validate_block
    from workflow.llm import sft, train
    from workflow.llm.data import sft_examples
    from workflow.llm.model import add_item_tokens, autocast, cast_frozen_linears, load_for_training
    from workflow.semantic_ids import sid_tokens

    samples = pd.read_parquet(samples_path)
    train_rows = samples[samples["split"] == "train"].head(64)
    llm = validate_block("llm", {**llm, "device": "auto", "dtype": "auto", "attention": "auto"})
    block = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    costs = {}
    for prompt, path in (("open", items_path), ("sid", sid_items_path)):
        items = pd.read_parquet(path)
        model, tokenizer, device, dtype = load_for_training(model_dir, llm)
        add_item_tokens(model, tokenizer, sid_tokens(items))
        model = train.add_lora(model, block, 0, tokenizer)
        cast_frozen_linears(model, dtype)
        examples = sft_examples(train_rows, items, tokenizer, "movie", llm, prompt)
        tokens = np.mean([len(e["prompt"]) + len(e["answer"]) for e in examples])
        batches = [sft.collate(examples[i:i + 4]) for i in range(0, 32, 4)]

        def steps():
            for batch in batches:
                with autocast(device, dtype):
                    loss, _, _ = sft.sft_loss(model, batch)
                loss.backward()

        steps()  # warm-up (first-call allocations)
        _, cpu, _ = cpu_seconds(steps)
        costs[prompt] = (tokens, cpu / len(batches))
        print(f"{prompt} prompt: {tokens:.0f} tokens per example (prompt + answer), {cpu / len(batches):.2f} CPU s "
              f"per SFT step of 4")
    print(f"sid / open: {costs['sid'][0] / costs['open'][0]:.2f}x the tokens, {costs['sid'][1] / costs['open'][1]:.2f}x "
          f"the CPU s per step")


if __name__ == "__main__":
    main()
