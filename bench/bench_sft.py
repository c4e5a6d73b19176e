"""Benchmark of LoRA SFT training throughput and model-FLOPs utilisation (MFU) on this CPU.

Model: the embedded SmolLM2-135M-Instruct, converted once into a cache folder (bench/out/base-model)
with the engine's `convert_base_model`. Data: candidate prompts built by workflow.llm.prompts from
synthetic movie-like titles (10 history titles, 20 candidates; ~410 tokens per sample, answers ~12
tokens; MovieLens-100K gives ~425 and ~12), or real samples with --samples/--items. Each variant runs the real
optimizer step of workflow/llm/train.py (`train_step`: forward, backward, clipping, AdamW) on
micro-batches of `--batch-size` samples, LoRA r=8 on q,k,v,o (config defaults).

FLOPs (the count used for MFU; per optimizer step, summed over samples):
  T = prompt + answer - 1 tokens a sample's row runs on (real tokens, padding not counted),
  A = answer tokens, N_lin = parameters of the decoder's linear layers (q,k,v,o,gate,up,down),
  d = hidden size, V = vocabulary, L = layers, H*D = attention width, r = LoRA rank.
  forward      F = 2*N_lin*T + 4*L*H*D*T(T+1)/2 (causal QK^T and AV) + 2*d*V*A (LM head on answers only)
                   + LoRA 2*r*(d_in+d_out) per adapted layer and token
  backward     frozen weights need no weight gradients: 1x forward for the linear layers and the
               head (input gradients only), 2x for attention (gradients of Q, K and V), 2x for LoRA.
  total        2*F_lin + 3*F_attn + 2*F_head + 3*F_lora  (about 4*N_lin per token: the familiar 6N
               rule assumes weight gradients for every weight and overstates LoRA work by ~1.5x;
               its figure, 6 * all parameters * tokens, is printed too for comparison)
MFU = FLOPs / step time / peak, peak = the best bf16 torch.matmul rate measured in the same run on
the same threads, before and after the training measurements. Both are given per wall-clock second
and per CPU-second of this process: on a shared machine wall time includes waiting for the CPU,
CPU time does not (and with several threads, OpenMP threads spinning at barriers while another
process holds a core inflate both; one thread gives the cleanest figure there).

Variants (each a fresh LoRA model, seed 0), cumulative from `bf16-answer-head` on:
  fp32-full-logits      fp32, HF forward with labels (-100 on the prompt): logits for every position
  bf16-full-logits      the same under bf16 autocast
  bf16-answer-head      workflow.llm.sft.sft_loss: the shared scorer, LM head on answer positions only
  +bf16-linear-weights  frozen linear weights stored in bf16 (model.cast_frozen_linears)
  +eager-attention      eager attention: under autocast its QK^T and AV are bf16 GEMMs, while sdpa's
                        CPU kernel gets fp32 queries (RoPE upcasts them) and runs in fp32. This is
                        what SFT runs on a bf16 CPU (llm.attention auto, workflow.llm.model)
  +causal-no-4d-mask    with one answer per sample, plain causal attention instead of the block mask
  +no-lora-dropout      lora_dropout 0 (PEFT draws a dropout mask per adapted layer: RNG-bound)
  +all-bf16-weights     every frozen weight in bf16, the residual stream too (not numerically equal)
On a CPU without native bf16 (no AVX-512 BF16 / AMX), where `llm.dtype: auto` computes in float32:
  fp32-answer-head      sft_loss in float32 with sdpa and the block mask: what SFT runs there
  fp32-eager-attention  the same with eager attention
  fp32-causal-sdpa      causal_answer_loss in float32: sdpa's is_causal path without the 4-D mask
  fp32-no-lora-dropout  fp32-answer-head with lora_dropout 0 (the default config's)
MFU is read against the matmul peak of the variant's compute dtype (bf16 under autocast, else fp32).

    .venv/bin/python bench/bench_sft.py [--threads N] [--steps S] [--batch-size B] [--variants ...]
        [--samples results/ml-100k/data/samples.parquet --items results/ml-100k/data/items.parquet --prompt open]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from workflow.llm import prompts, train
from workflow.llm.model import _cpu_has_fast_bf16, cast_frozen_linears, convert_base_model, load_model
from workflow.llm.sft import collate, sft_loss

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "out" / "base-model"
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
WORDS = ("love night city dark star man woman story last return king day life house war blue time girl "
         "dead secret world game little big american heart road kill summer lost wild murder black").split()


def matmul_peak(dtype=torch.bfloat16, n=4096, reps=3) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype` over `reps` timed runs."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def synthetic_examples(tokenizer, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)

    def title():
        words = rng.choice(WORDS, size=rng.integers(2, 6))
        return " ".join(w.capitalize() for w in words) + f" ({rng.integers(1930, 1999)})"

    out = []
    for _ in range(n):
        history, candidates = [title() for _ in range(10)], [title() for _ in range(20)]
        out.append({"prompt": prompts.candidate_prompt_ids(tokenizer, history, candidates, "movie", max_title_tokens=24),
                    "answer": prompts.clipped_answer_ids(tokenizer, candidates[int(rng.integers(20))], 24)})
    return out


def real_examples(tokenizer, samples_path, items_path, n: int, prompt: str = "candidate") -> list[dict]:
    import pandas as pd

    from workflow.llm.data import sft_examples

    samples = pd.read_parquet(samples_path)
    samples = samples[samples["split"] == "train"].sample(n, random_state=0)
    items = pd.read_parquet(items_path, columns=["item_id", "title"])
    return sft_examples(samples, items, tokenizer, "movie", {"max_title_tokens": 24, "max_prompt_tokens": 512},
                        prompt=prompt)


def step_flops(config, examples, lora_r: int, n_lora_modules: int, lora_width: int) -> dict[str, float]:
    """FLOPs of one optimizer step over `examples` (formula in the module docstring)."""
    d, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, head_dim = config.num_attention_heads, getattr(config, "head_dim", d // config.num_attention_heads)
    kv = config.num_key_value_heads * head_dim
    n_lin = L * (d * heads * head_dim * 2 + d * kv * 2 + 3 * d * config.intermediate_size)
    T = np.array([len(e["prompt"]) + len(e["answer"]) - 1 for e in examples], dtype=np.float64)
    A = np.array([len(e["answer"]) for e in examples], dtype=np.float64)
    f_lin = 2 * n_lin * T.sum()
    f_attn = 4 * L * heads * head_dim * (T * (T + 1) / 2).sum()
    f_head = 2 * d * V * A.sum()
    f_lora = 2 * lora_r * lora_width * n_lora_modules * T.sum()
    return {"model": 2 * f_lin + 3 * f_attn + 2 * f_head + 3 * f_lora, "tokens": T.sum(), "n_lin": n_lin,
            "forward": f_lin + f_attn + f_head + f_lora}


def hf_full_logits_loss(model, batch):
    """The common SFT path (e.g. TRL): right-padded prompt+answer rows, labels -100 on the prompt,
    logits for every position."""
    prompt_ids, answer_ids = batch
    length = max(len(p) + len(a) for p, a in zip(prompt_ids, answer_ids))
    ids = torch.full((len(prompt_ids), length), 2)
    labels = torch.full((len(prompt_ids), length), -100)
    mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompt_ids, answer_ids)):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        mask[i, :len(p) + len(a)] = 1
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    n = sum(len(a) for a in answer_ids)
    return loss, n, {"tokens": sum(len(p) + len(a) - 1 for p, a in zip(prompt_ids, answer_ids))}


def causal_answer_loss(model, batch):
    """The SFT loss computed like `sft_loss` (LM head on answer positions only) but without the
    scorer's 4D block mask: with one answer per sample the block mask is plain causal, and
    right padding is never attended by real tokens, so sdpa can take its is_causal path."""
    prompt_ids, answer_ids = batch
    inner = model.get_base_model()
    rows = [list(p) + list(a[:-1]) for p, a in zip(prompt_ids, answer_ids)]
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [2] * (length - len(r)) for r in rows])
    hidden = inner.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    index = torch.tensor([b * length + len(p) - 1 + t for b, (p, a) in enumerate(zip(prompt_ids, answer_ids))
                          for t in range(len(a))])
    targets = torch.tensor([t for a in answer_ids for t in a])
    logits = inner.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[index]).float()
    logprob = logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, -1)
    return -logprob.mean(), len(targets), {"tokens": sum(len(r) for r in rows)}


def measure(model, examples, loss_fn, autocast, batch_size: int, steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one optimizer step (one micro-batch of `batch_size`),
    medians over `steps` after one warm-up step. CPU time counts only while this process runs, so
    on a shared machine it measures the work, wall time the wait."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = train.lr_schedule(optimizer, steps + 1, 0.0)
    wall, cpu = [], []
    for s in range(steps + 1):
        batch = collate(examples[s * batch_size:(s + 1) * batch_size])
        t, c = time.perf_counter(), time.process_time()
        train.train_step(model, [batch], loss_fn, optimizer, scheduler, params, 1.0, autocast)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall[1:])), float(np.median(cpu[1:]))


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


VARIANTS = {
    # name: (loss_fn, autocast, frozen weights: fp32 / linear (bf16 linear layers, what SFT does) /
    #        all (every frozen weight bf16, residual stream too), LoRA dropout, attention)
    "fp32-full-logits": (hf_full_logits_loss, contextlib.nullcontext, "fp32", 0.05, "sdpa"),
    "bf16-full-logits": (hf_full_logits_loss, bf16_autocast, "fp32", 0.05, "sdpa"),
    "bf16-answer-head": (sft_loss, bf16_autocast, "fp32", 0.05, "sdpa"),
    "+bf16-linear-weights": (sft_loss, bf16_autocast, "linear", 0.05, "sdpa"),
    "+eager-attention": (sft_loss, bf16_autocast, "linear", 0.05, "eager"),
    "+causal-no-4d-mask": (causal_answer_loss, bf16_autocast, "linear", 0.05, "eager"),
    "+no-lora-dropout": (sft_loss, bf16_autocast, "linear", 0.0, "eager"),
    "+all-bf16-weights": (sft_loss, bf16_autocast, "all", 0.0, "eager"),
    "fp32-answer-head": (sft_loss, contextlib.nullcontext, "fp32", 0.05, "sdpa"),
    "fp32-eager-attention": (sft_loss, contextlib.nullcontext, "fp32", 0.05, "eager"),
    "fp32-causal-sdpa": (causal_answer_loss, contextlib.nullcontext, "fp32", 0.05, "sdpa"),
    "fp32-no-lora-dropout": (sft_loss, contextlib.nullcontext, "fp32", 0.0, "sdpa"),
}
FP32_VARIANTS = ["fp32-full-logits", "fp32-answer-head", "fp32-eager-attention", "fp32-causal-sdpa",
                 "fp32-no-lora-dropout"]
DEFAULT_VARIANTS = ["fp32-full-logits", "bf16-full-logits", "bf16-answer-head", "+bf16-linear-weights",
                    "+eager-attention", "+no-lora-dropout"]


def lora_model(model_dir, weights: str, dropout: float, attention: str):
    base, _ = load_model(model_dir, device="cpu", dtype="float32", attention=attention)
    if weights == "all":
        base.to(torch.bfloat16)
    model = train.add_lora(base, {**LORA, "lora_dropout": dropout}, seed=0)  # LoRA weights stay fp32
    if weights == "linear":
        cast_frozen_linears(model, torch.bfloat16)
    return model


def peak_cpu(dtype=torch.bfloat16, reps: int = 3) -> float:
    """Best matmul FLOP per CPU-second in `dtype` (sizes 1024..4096) of this process."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        for _ in range(reps):
            c = time.process_time()
            a @ b
            best = max(best, 2 * n ** 3 / max(time.process_time() - c, 1e-9))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=str(CACHE))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per variant (after one warm-up)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: the bf16 chain on a CPU with native bf16, the fp32 variants elsewhere")
    p.add_argument("--samples", default=None, help="real samples.parquet instead of synthetic prompts")
    p.add_argument("--items", default=None)
    p.add_argument("--prompt", default="candidate", choices=["candidate", "open", "sid"], help="of real samples")
    args = p.parse_args()
    if args.variants is None:
        args.variants = DEFAULT_VARIANTS if _cpu_has_fast_bf16() else FP32_VARIANTS

    torch.set_num_threads(args.threads)
    if not (Path(args.model_dir) / "config.json").exists():
        print(f"converting the embedded model into {args.model_dir} (once)")
        convert_base_model("embedded", args.model_dir)
    base, tokenizer = load_model(args.model_dir, device="cpu", dtype="float32")
    n_examples = args.batch_size * (args.steps + 1)
    examples = (real_examples(tokenizer, args.samples, args.items, n_examples, args.prompt) if args.samples
                else synthetic_examples(tokenizer, n_examples))
    timed = examples[args.batch_size:]
    lengths = np.array([len(e["prompt"]) + len(e["answer"]) - 1 for e in examples])
    padded = lengths.reshape(-1, args.batch_size).max(1).repeat(args.batch_size).sum()
    n_params = sum(p_.numel() for p_ in base.parameters())
    model = train.add_lora(base, LORA, seed=0)
    lora_width = sum(m.in_features if n.endswith("lora_A.default") else m.out_features
                     for n, m in model.named_modules() if n.endswith(("lora_A.default", "lora_B.default")))
    flops = step_flops(base.config, timed, LORA["lora_r"], 1, lora_width)
    per_step = {k: flops[k] / args.steps for k in ("model", "tokens")}
    del model, base

    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          f"(shared machine: wall times include waiting; CPU times do not), micro-batch {args.batch_size}")
    print(f"model {n_params / 1e6:.1f}M parameters ({flops['n_lin'] / 1e6:.1f}M in decoder linear layers); "
          f"tokens per sample {lengths.mean():.0f} (min {lengths.min()}, max {lengths.max()}), "
          f"answer {np.mean([len(e['answer']) for e in examples]):.1f}, padding {1 - lengths.sum() / padded:.1%}")
    print(f"FLOPs per token: {per_step['model'] / per_step['tokens'] / 1e6:.0f}M counted (formula in the "
          f"docstring) vs {6 * n_params / 1e6:.0f}M by the 6N rule")
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    compute = {name: "bf16" if VARIANTS[name][1] is bf16_autocast or VARIANTS[name][2] == "all" else "fp32"
               for name in args.variants}
    wanted = sorted(set(compute.values()))
    peaks = [{d: (matmul_peak(dtypes[d]), peak_cpu(dtypes[d])) for d in wanted}]
    results = {}
    for name in args.variants:
        loss_fn, autocast, weights, dropout, attention = VARIANTS[name]
        model = lora_model(args.model_dir, weights, dropout, attention)
        results[name] = measure(model, examples, loss_fn, autocast, args.batch_size, args.steps)
        del model
    peaks.append({d: (matmul_peak(dtypes[d]), peak_cpu(dtypes[d])) for d in wanted})
    best = {d: (max(p_[d][0] for p_ in peaks), max(p_[d][1] for p_ in peaks)) for d in wanted}
    for d in wanted:
        print(f"{d} matmul peak: {best[d][0] / 1e9:.0f} GFLOP/s wall, {best[d][1] / 1e9:.0f} GFLOP per CPU-second "
              f"(best of before/after: {', '.join(f'{p_[d][0] / 1e9:.0f}/{p_[d][1] / 1e9:.0f}' for p_ in peaks)})")
    first = next(iter(results.values()))[1]
    print(f"{'variant':22s} {'dtype':>5s} {'wall s':>7s} {'CPU s':>7s} {'tok/s':>6s} {'tok/CPU-s':>9s} "
          f"{'MFU wall':>8s} {'MFU CPU':>8s} {'6N CPU':>7s} {'x first':>7s}")
    for name, (wall, cpu) in results.items():
        wall_peak, cpu_peak = best[compute[name]]
        print(f"{name:22s} {compute[name]:>5s} {wall:7.2f} {cpu:7.2f} {per_step['tokens'] / wall:6.0f} "
              f"{per_step['tokens'] / cpu:9.0f} {per_step['model'] / wall / wall_peak:8.1%} "
              f"{per_step['model'] / cpu / cpu_peak:8.1%} {6 * n_params * per_step['tokens'] / cpu / cpu_peak:7.1%} "
              f"{first / cpu:6.2f}x")


if __name__ == "__main__":
    main()
