"""GPU memory per method at paper scale, estimated from shapes (README "GPU memory"): the frozen
weights, the trainable weights with their gradients and AdamW state, and the activations of one
micro-batch as config/paper.yaml sets it, with and without gradient checkpointing.

Shapes: Llama-2-7B (32 layers, hidden 4096, MLP 11008, vocab 32000). Token counts per sample:
a candidate prompt of 10 history and 20 candidate titles is ~400 Llama tokens, an open prompt ~180,
a title answer ~12 (measured on ML-1M titles with the Llama tokenizer's ~1.3 tokens per word).
Activations per token and layer: ~34 h + 5 a T bytes in bf16 without checkpointing (Korthikanti et
al. 2022, "Reducing Activation Recomputation", eq. 1, attention scores of the sdpa kernel not
stored: 34 h); with checkpointing, the layer input (2 h bytes) per layer plus one layer's full set.
The packed scorer holds one prompt plus its 1 + k answers per sample (no full-vocabulary logits:
the LM head runs at answer positions only). Evaluation: the prompt KV cache of one batch.

    python bench/memory_estimate.py
"""
from __future__ import annotations

GB = 1e9
LAYERS, HIDDEN, MLP, VOCAB, PARAMS = 32, 4096, 11008, 32000, 6.74e9
PROMPT = {"candidate": 400, "open": 180}
ANSWER = 12


def lora_params(r: int, targets: list[str]) -> int:
    shapes = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
              "o_proj": (HIDDEN, HIDDEN), "gate_proj": (HIDDEN, MLP), "up_proj": (HIDDEN, MLP),
              "down_proj": (MLP, HIDDEN)}
    return LAYERS * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def activations(tokens: int, checkpointing: bool) -> float:
    per_layer = 34 * HIDDEN * tokens  # bytes, bf16
    if checkpointing:
        return LAYERS * 2 * HIDDEN * tokens + per_layer
    return LAYERS * per_layer


def kv_cache(tokens: int) -> float:
    return LAYERS * 2 * HIDDEN * 2 * tokens


ROWS = [  # method, micro-batch samples, tokens per sample, LoRA targets, extra no-grad pass tokens
    ("sft (q, v; candidate prompt)", 8, PROMPT["candidate"] + ANSWER, ["q_proj", "v_proj"], 0),
    ("dmpo / sdpo (k = 3)", 4, PROMPT["candidate"] + 4 * ANSWER, ["q_proj", "v_proj"], 0),
    ("dynamicpo (k = 15)", 4, PROMPT["candidate"] + 16 * ANSWER, ["q_proj", "v_proj"], 0),
    ("llara / ilora (7 projections)", 8, PROMPT["candidate"] + 30 + ANSWER,
     ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 0),
    ("soft (open prompt, 2 answers)", 8, PROMPT["open"] + 2 * ANSWER, ["q_proj", "v_proj"],
     4 * 16 * (PROMPT["open"] + 64)),  # the probe's beam search: 4 beams x batch 16 x (prompt + 64 new)
    ("evaluation (batch 16, candidate)", 0, 0, [], 16 * (PROMPT["candidate"] + 20 * ANSWER)),
]


def main() -> None:
    weights = {"bf16": PARAMS * 2, "nf4": (PARAMS - 2 * VOCAB * HIDDEN) * 0.53 + 2 * VOCAB * HIDDEN * 2}
    print(f"{'method':<34} {'tokens':>6} {'LoRA+opt':>9} {'act. ckpt':>9} {'act. none':>9} "
          f"{'bf16 ckpt':>9} {'bf16 none':>9} {'nf4 ckpt':>9}")
    for name, batch, per_sample, targets, nograd in ROWS:
        tokens = batch * per_sample
        trainable = lora_params(8, targets) * 16  # fp32 weight + grad + two AdamW moments
        ckpt, none = activations(tokens, True), activations(tokens, False)
        extra = kv_cache(nograd)
        peak = lambda w, act: (w + trainable + max(act, extra)) / GB  # noqa: E731
        print(f"{name:<34} {tokens:>6} {trainable / GB:>8.2f}G {ckpt / GB:>8.2f}G {none / GB:>8.2f}G "
              f"{peak(weights['bf16'], ckpt):>8.1f}G {peak(weights['bf16'], none):>8.1f}G "
              f"{peak(weights['nf4'], ckpt):>8.1f}G")


if __name__ == "__main__":
    main()
