"""Benchmark of the LLM evaluation protocols on the default setting: the embedded SmolLM2-135M,
MovieLens-100K test samples with 20 candidates (built here by the ingest and prepare stages), bf16
autocast where the CPU has it. Prints, per phase, seconds, prompt tokens and tokens/s, the share of
each phase, and the projected time of the default run (200 test samples) from the measured rate.

On a CPU shared with other jobs run it with --threads 1 and read the CPU seconds: wall times with
2 threads swing 3x with the machine's load (OpenMP threads wait on each other).

Phases: title embeddings (all items, once per dataset); likelihood and generation on the candidate
prompt, first as two separate passes (the packed training-path scorer, then generate re-encoding
the prompt; its prefill alone is timed too), then as the evaluation runs them, one prompt encoding
whose KV cache serves both (the ratio of the two is printed); grounded (greedy on the open prompt +
embedding + faiss ranking).

    .venv/bin/python bench/bench_evaluate.py [--samples 48] [--threads 2] [--batch-size 8] [--model-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402


def ensure_model(model_dir: Path) -> Path:
    if not (model_dir / "config.json").is_file():
        from workflow.llm.model import convert_base_model

        print(f"converting the embedded model into {model_dir} (once)", flush=True)
        convert_base_model("embedded", model_dir)
    return model_dir


def ensure_data(folder: Path) -> tuple[Path, Path]:
    import json
    import subprocess

    samples, items = folder / "samples.parquet", folder / "items.parquet"
    if samples.is_file() and items.is_file():
        return samples, items
    folder.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    subprocess.run([py, "-m", "workflow.ingest", "--spec", json.dumps({"name": "ml-100k", "format": "recbole-atomic",
                    "path": "embedded", "domain": "movie", "max_bad_lines": 0}), "--interactions", str(folder / "interactions.parquet"),
                    "--items", str(items)], check=True, cwd=ROOT, capture_output=True)
    spec = {"kcore": 5, "max_history": 10, "n_candidates": 20, "max_samples": {"valid": 64, "test": 200}}
    subprocess.run([py, "-m", "workflow.prepare", "--spec", json.dumps(spec), "--seed", "42", "--interactions",
                    str(folder / "interactions.parquet"), "--items", str(items), "--samples", str(samples)],
                   check=True, cwd=ROOT, capture_output=True)
    return samples, items


def timed(fn):
    """(result, (wall seconds, CPU seconds of this process)); on a shared CPU the CPU seconds of a
    one-thread run are the robust figure, the wall time depends on the other jobs."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - wall, time.process_time() - cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmrec-bench-smollm2")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmrec-bench-ml100k")
    p.add_argument("--samples", type=int, default=48, help="test samples evaluated (the default run has 200)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args()

    from workflow.llm import evaluate, grounding, inference, protocols
    from workflow.llm.model import autocast, load_model, resolve_dtype

    torch.set_num_threads(args.threads)
    samples_path, items_path = ensure_data(args.data_dir)
    model, tokenizer = load_model(ensure_model(args.model_dir), device="cpu", dtype="auto")
    samples = evaluate.read_samples(samples_path, ["test"]).head(args.samples).reset_index(drop=True)
    items = pd.read_parquet(items_path, columns=["item_id", "title"])
    llm = {"device": "cpu", "dtype": "auto", "max_title_tokens": 24, "max_prompt_tokens": 512}
    cast = lambda: autocast("cpu", "auto")  # noqa: E731
    batch, new = args.batch_size, args.max_new_tokens
    print(f"threads {args.threads}, compute dtype {resolve_dtype('auto', 'cpu')}, {len(samples)} test samples, "
          f"batch {batch}, max_new_tokens {new}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    inputs = evaluate.prompt_inputs(samples, items, tokenizer, "movie", llm)
    cand_tokens = sum(map(len, inputs["candidate_prompt"]))
    answer_tokens = sum(len(a) for answers in inputs["answers"] for a in answers)
    open_tokens = sum(map(len, inputs["open_prompt"]))
    title_tokens = sum(map(len, grounding.tokenize_texts(tokenizer, items["title"].tolist())))

    rows = []
    emb, t = timed(lambda: grounding.embed_texts(model, tokenizer, items["title"].tolist(), 64, autocast=cast))
    rows.append(("title embeddings (once per dataset)", t, title_tokens, False))
    def packed_likelihood():  # the training-path scorer: prompt and 20 answers packed in one row
        from workflow.llm.scoring import candidate_logprobs

        with torch.no_grad():
            for chosen in inference.batches(inference.by_length(inputs["candidate_prompt"]), batch):
                with cast():
                    candidate_logprobs(model, [inputs["candidate_prompt"][i] for i in chosen],
                                       [inputs["answers"][i] for i in chosen])

    def generate_from_scratch(max_new):  # generate re-encoding the prompt (no cache hand-off)
        config = inference.generation_config(tokenizer, max_new)
        prompts = inputs["candidate_prompt"]
        with torch.no_grad():
            for chosen in inference.batches(inference.by_length(prompts), batch):
                ids, mask, _ = inference.left_pad([prompts[i] for i in chosen], inference.pad_id(tokenizer))
                with cast():
                    model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    _, t_packed = timed(packed_likelihood)
    rows.append(("likelihood, packed scorer (separate)", t_packed, cand_tokens + answer_tokens, False))
    _, t_gen = timed(lambda: generate_from_scratch(new))
    rows.append(("generation, prompt re-encoded (separate)", t_gen, cand_tokens, False))
    _, t = timed(lambda: generate_from_scratch(1))
    rows.append(("  of which prefill (1 new token)", t, cand_tokens, False))
    _, t_like = timed(lambda: inference.likelihood_scores(model, tokenizer, inputs["candidate_prompt"],
                                                          inputs["answers"], batch, cast))
    rows.append(("likelihood alone, prompt cache", t_like, cand_tokens + answer_tokens, False))
    (_, _, answers), t_shared = timed(lambda: inference.prompt_passes(
        model, tokenizer, inputs["candidate_prompt"], inputs["answers"], max_new_tokens=new, batch_size=batch,
        autocast=cast))
    rows.append(("likelihood + generation, one prompt cache", t_shared, cand_tokens + answer_tokens, True))
    new_tokens = [len(tokenizer.encode(a)) for a in answers]

    def grounded():
        open_answers = inference.greedy_answers(model, tokenizer, inputs["open_prompt"], new, batch, cast)
        queries = grounding.embed_texts(model, tokenizer, open_answers, 32, autocast=cast)
        position = {i: k for k, i in enumerate(items["item_id"].astype(str))}
        return protocols.grounded_ranking(queries, grounding.item_index(emb),
                                          np.array([position[x] for x in samples["target"]]),
                                          [[position[i] for i in h] for h in samples["history"]])

    _, t = timed(grounded)
    rows.append(("grounded (open prompt, embed, faiss)", t, open_tokens, True))

    separate = t_packed[1] + t_gen[1]
    print(f"likelihood + generation: separate passes {separate:.1f} CPU s, one shared prompt cache "
          f"{t_shared[1]:.1f} CPU s: {separate / t_shared[1]:.2f}x (likelihood alone: packed "
          f"{t_packed[1]:.1f} vs cached {t_like[1]:.1f} CPU s, {t_packed[1] / t_like[1]:.2f}x)")
    wall = sum(t[0] for _, t, _, counted in rows if counted)
    cpu = sum(t[1] for _, t, _, counted in rows if counted)
    print(f"{'phase':40s} {'wall s':>7s} {'CPU s':>7s} {'tokens':>7s} {'tok/CPU s':>9s} {'share':>6s}")
    for name, (w, c), tokens, counted in rows:
        share = f"{c / cpu:6.0%}" if counted else ""
        print(f"{name:40s} {w:7.1f} {c:7.1f} {tokens:7d} {tokens / c:9.0f} {share:>6s}")
    print(f"generated answers: mean {np.mean(new_tokens):.1f} tokens, {np.mean([n >= new for n in new_tokens]):.0%} hit "
          f"max_new_tokens")
    print(f"per method: {wall:.1f} s wall, {cpu:.1f} CPU s for {len(samples)} samples; projected for 200 test samples: "
          f"{wall / len(samples) * 200 / 60:.1f} min wall, {cpu / len(samples) * 200 / 60:.1f} CPU min "
          f"(+ title embeddings once: {rows[0][1][1]:.0f} CPU s); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
