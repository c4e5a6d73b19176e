"""Benchmark: shared-prefix candidate scoring vs one prompt+answer sequence per candidate.

Real embedded SmolLM2-135M (converted once into --model-dir), an LLaRA prompt listing 20 real
MovieLens titles (325 tokens: a title with its year is ~12 SmolLM2 tokens, digits are split).
- no grad, 20 candidates: packed (workflow.llm.scoring.candidate_logprobs), concat (each candidate
  its own prompt+answer sequence, all in one batch: scoring.concat_candidate_logprobs), kvcache
  (prompt once, its KV cache repeated over the candidates; measured to choose the engine's approach);
- with gradients through a LoRA (r=8 on q,k,v,o), 1+3 and 1+15 candidates: packed vs concat (how
  TRL's DPO trainer scores chosen and rejected answers).
Each in fp32 and in bf16 autocast. Time: best of --repeats runs after a small warm-up, the variants
of a setting interleaved in one process. Memory: one fresh process per variant, peak RSS (VmHWM,
reset through /proc/self/clear_refs once the model is loaded) minus the loaded model's RSS.

    .venv/bin/python bench/bench_scoring.py [--threads 1] [--repeats 2] [--model-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TITLES = [
    "Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)",
    "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)", "Richard III (1995)",
    "Seven (Se7en) (1995)", "Usual Suspects, The (1995)", "Mighty Aphrodite (1995)", "Postino, Il (1994)",
    "Mr. Holland's Opus (1995)", "French Twist (Gazon maudit) (1995)", "From Dusk Till Dawn (1996)",
    "White Balloon, The (1995)", "Antonia's Line (1995)", "Angels and Insects (1995)", "Muppet Treasure Island (1996)",
    "Braveheart (1995)", "Taxi Driver (1976)", "Rumble in the Bronx (1995)", "Birdcage, The (1996)",
    "Brothers McMullen, The (1995)", "Bad Boys (1995)", "Apollo 13 (1995)", "Batman Forever (1995)",
]
HISTORY, N_CANDIDATES = TITLES[:2], TITLES[8:28]  # 325-token prompt: 20 real titles are ~12 tokens each


def vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def build_inputs(tokenizer, batch: int, n_answers: int):
    from workflow.llm import prompts

    prompt_ids, answer_ids = [], []
    for b in range(batch):
        cands = N_CANDIDATES[b:] + N_CANDIDATES[:b]  # a different candidate order per sample
        prompt_ids.append(prompts.candidate_prompt_ids(tokenizer, HISTORY, cands, "movie"))
        answer_ids.append([prompts.answer_ids(tokenizer, t) for t in cands[:n_answers]])
    return prompt_ids, answer_ids


def kvcache_logprobs(model, prompt_ids, answer_ids):
    """Prompt once with use_cache, cache repeated over the C candidates, candidates in one batch."""
    import torch

    device = model.device
    out_sum, out_n = [], []
    for prompt, answers in zip(prompt_ids, answer_ids):
        C, P, L = len(answers), len(prompt), max(len(a) for a in answers)
        first = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
        cache = first.past_key_values
        cache.batch_repeat_interleave(C)
        lp_first = torch.log_softmax(first.logits[0, -1].float(), -1)[[a[0] for a in answers]]
        total = lp_first.clone()
        if L > 1:
            inputs = torch.tensor([a[:-1] + [0] * (L - len(a)) for a in answers], device=device)
            valid = torch.tensor([[1] * (len(a) - 1) + [0] * (L - len(a)) for a in answers], device=device)
            mask = torch.cat([torch.ones(C, P, dtype=valid.dtype, device=device), valid], 1)
            pos = (P + torch.arange(L - 1, device=device)).expand(C, -1)
            logits = model(input_ids=inputs, attention_mask=mask, position_ids=pos, past_key_values=cache).logits
            targets = torch.tensor([a[1:] + [0] * (L - len(a)) for a in answers], device=device)
            lp = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0] * valid
            total = total + lp.sum(-1)
        out_sum.append(total)
        out_n.append(torch.tensor([len(a) for a in answers]))
    return torch.stack(out_sum), torch.stack(out_n)


def setup(args):
    """Model (LoRA-wrapped in grad mode), inputs and step(variant, prompts, answers) -> log-probs."""
    import torch

    from workflow.llm import scoring
    from workflow.llm.model import autocast, load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_model(args.model_dir, device="cpu", dtype="float32")
    grad = args.mode == "grad"
    if grad:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        model.train()
    fns = {"packed": scoring.candidate_logprobs, "concat": scoring.concat_candidate_logprobs,
           "kvcache": kvcache_logprobs}
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    def step(variant, p, a):
        with torch.set_grad_enabled(grad), autocast("cpu", dtype):
            logp, _ = fns[variant](model, p, a)
        if grad:
            logp.sum().backward()
            model.zero_grad(set_to_none=True)
        return logp.detach()

    prompt_ids, answer_ids = build_inputs(tok, args.batch, args.candidates)
    for variant in args.variants:  # warm-up: kernels, allocator
        step(variant, [p[:8] for p in prompt_ids], [a[:1] for a in answer_ids])
    return prompt_ids, answer_ids, step


def time_worker(args) -> None:
    """Variants interleaved in one process, so drifting load on a shared CPU hits them alike."""
    import torch

    prompt_ids, answer_ids, step = setup(args)
    times = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for variant in args.variants:
            t0 = time.perf_counter()
            logp = step(variant, prompt_ids, answer_ids)
            times[variant].append(time.perf_counter() - t0)
            torch.save(logp, args.out.with_suffix(f".{variant}.pt"))
    print(json.dumps({"seconds": {v: min(t) for v, t in times.items()}, "prompt_tokens": len(prompt_ids[0])}))


def memory_worker(args) -> None:
    """One run of one variant: the peak RSS it adds over the loaded, warmed-up model."""
    prompt_ids, answer_ids, step = setup(args)
    base_kb = vm_kb("VmRSS")
    exact = reset_peak()
    step(args.variants[0], prompt_ids, answer_ids)
    peak_kb = vm_kb("VmHWM") if exact else __import__("resource").getrusage(0).ru_maxrss
    print(json.dumps({"peak_mb": peak_kb / 1024, "added_mb": (peak_kb - base_kb) / 1024, "exact": exact}))


def ensure_model(model_dir: Path) -> Path:
    if not (model_dir / "config.json").is_file():
        from workflow.llm.model import convert_base_model

        print(f"converting the embedded model into {model_dir} (once)", flush=True)
        convert_base_model("embedded", model_dir)
    return model_dir


def run_worker(args, kind: str, mode: str, variants: list[str], dtype: str, candidates: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--mode", mode, "--variants", ",".join(variants),
           "--dtype", dtype, "--candidates", str(candidates), "--batch", str(args.batch),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--model-dir", str(args.model_dir),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {mode}/{variants}/{dtype} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmrec-bench-smollm2")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a CPU shared with other jobs, OpenMP oversubscription "
                        "slows multi-threaded runs erratically)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per variant (the best is kept)")
    p.add_argument("--batch", type=int, default=1, help="samples per call")
    p.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["nograd", "grad"], help=argparse.SUPPRESS)
    p.add_argument("--variants", type=lambda s: s.split(","), help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    p.add_argument("--candidates", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return (time_worker if args.worker == "time" else memory_worker)(args)

    import torch

    ensure_model(args.model_dir)
    settings = [("nograd", 20, ["packed", "concat", "kvcache"]), ("grad", 4, ["packed", "concat"]),
                ("grad", 16, ["packed", "concat"])]
    rows, logps = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("fp32", "bf16"):
            for mode, c, variants in settings:
                out = Path(tmp) / f"{mode}-{dtype}-{c}"
                timing = run_worker(args, "time", mode, variants, dtype, c, out)
                memory = {v: run_worker(args, "memory", mode, [v], dtype, c, out) for v in variants}
                lp = {v: torch.load(out.with_suffix(f".{v}.pt")) for v in variants}
                logps[mode, dtype, c] = lp
                rows.append((mode, c, dtype, timing, memory, (lp["packed"] - lp["concat"]).abs().max().item()))
                print(f"  {mode} C={c} {dtype}: " + ", ".join(
                    f"{v} {timing['seconds'][v]:.2f} s +{memory[v]['added_mb']:.0f} MB" for v in variants), flush=True)
    print(f"\nprompt {timing['prompt_tokens']} tokens, batch {args.batch}, threads {args.threads}, "
          f"torch {torch.__version__}; time: best of {args.repeats}, variants interleaved in one process; "
          "memory: peak RSS added over the loaded model, one process per variant")
    print("| mode | C | dtype | packed s | concat s | speed-up | kvcache s | packed +MB | concat +MB "
          "| max abs diff logp packed vs concat |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, c, dtype, timing, memory, diff in rows:
        sec = timing["seconds"]
        label = "no grad" if mode == "nograd" else f"grad, 1+{c - 1}"
        kv = f"{sec['kvcache']:.2f}" if "kvcache" in sec else "-"
        print(f"| {label} | {c} | {dtype} | {sec['packed']:.2f} | {sec['concat']:.2f} | "
              f"{sec['concat'] / sec['packed']:.1f}x | {kv} | {memory['packed']['added_mb']:.0f} | "
              f"{memory['concat']['added_mb']:.0f} | {diff:.1e} |")
    bf_vs_fp = (logps["nograd", "bf16", 20]["packed"] - logps["nograd", "fp32", 20]["packed"]).abs().max().item()
    print(f"\nbf16 autocast vs fp32 (packed, no grad): max abs diff of log-probs {bf_vs_fp:.3f}")


if __name__ == "__main__":
    main()
