"""GPU benchmark of `make gpu-check` (about a minute on one GPU): SmolLM2-135M on CUDA.

  train step     LoRA SFT steps (batch 8 open prompts): tokens/s and peak memory, without and with
                 gradient checkpointing
  scorer         a DMPO-sized pass (1 target + 15 negatives per sample, 8 samples): the packed
                 scorer (prompt once, answers packed) against one sequence per candidate
                 (`concat_candidate_logprobs`): seconds, peak memory, the speed-up
  loading        host peak of loading onto the GPU (bench_loading.py --device cuda)

Ratios are measured in this one run.

    .venv/bin/python bench/bench_gpu.py [--model-dir results/models/base] [--steps 10]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench_evaluate import ensure_model  # noqa: E402

TITLES = ["Heat (1995)", "Fargo (1996)", "Alien (1979)", "Brazil (1985)", "Jaws (1975)", "Vertigo (1958)",
          "Casablanca (1942)", "Psycho (1960)", "Amadeus (1984)", "Rocky (1976)", "Gattaca (1997)", "Tampopo (1985)",
          "Toy Story (1995)", "Babe (1995)", "Clueless (1995)", "Seven (1995)"]


def batch(tokenizer, n: int, k: int):
    from workflow.llm import prompts

    ps = [prompts.open_prompt_ids(tokenizer, TITLES[i % 4: i % 4 + 10], "movie", max_title_tokens=24,
                                  max_prompt_tokens=512) for i in range(n)]
    ans = [[prompts.clipped_answer_ids(tokenizer, TITLES[(i + j) % len(TITLES)], 24) for j in range(k)]
           for i in range(n)]
    return ps, ans


def timed(fn, repeats: int) -> tuple[float, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    from workflow.config import validate_block
    from workflow.llm import scoring, sft, train
    from workflow.llm.model import autocast, cast_frozen_linears, load_for_training

    model_dir = Path(a.model_dir) if a.model_dir else ensure_model(Path(tempfile.gettempdir()) / "llmrec-bench-model")
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__} (CUDA {torch.version.cuda})")
    lora = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj",
                                                                                     "o_proj"], "lr": 1e-4}
    for checkpointing in (False, True):
        model, tokenizer, device, dtype = load_for_training(model_dir, validate_block("llm", {
            "device": "cuda", "gradient_checkpointing": checkpointing}))
        model = train.add_lora(model, lora, seed=0)
        cast_frozen_linears(model, dtype)
        ps, ans = batch(tokenizer, 8, 1)
        params = [q for q in model.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        scheduler = train.lr_schedule(optimizer, 1000, 0.0)
        step = lambda: train.train_step(model, [(ps, [x[0] for x in ans])], sft.sft_loss, optimizer,  # noqa: E731
                                        scheduler, params, 1.0, lambda: autocast(device, dtype),
                                        train.grad_scaler(device, dtype))
        row = step()  # warm-up
        seconds, peak = timed(step, a.steps)
        print(f"train step, checkpointing {'on ' if checkpointing else 'off'}: {row['tokens'] / seconds:,.0f} tokens/s, "
              f"peak {peak:,.0f} MiB ({dtype})")
        del model, optimizer
        torch.cuda.empty_cache()

    model, tokenizer, device, dtype = load_for_training(model_dir, validate_block("llm", {"device": "cuda"}))
    model.requires_grad_(False)
    ps, ans = batch(tokenizer, 8, 16)
    results = {}
    with torch.no_grad(), autocast(device, dtype):
        for name, fn in (("packed", lambda: scoring.candidate_logprobs(model, ps, ans)),
                         ("one sequence per candidate", lambda: scoring.concat_candidate_logprobs(model, ps, ans))):
            fn()
            results[name] = timed(fn, a.steps)
    for name, (seconds, peak) in results.items():
        print(f"scorer, {name}: {seconds * 1000:.1f} ms per batch of 8 x 16 answers, peak {peak:,.0f} MiB")
    speedup = results["one sequence per candidate"][0] / results["packed"][0]
    print(f"scorer speed-up (packed against one sequence per candidate): {speedup:.2f}x")
    del model
    torch.cuda.empty_cache()
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_loading.py"), "--model-dir", str(model_dir),
                    "--device", "cuda"], check=True)


if __name__ == "__main__":
    main()
