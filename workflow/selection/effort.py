"""DEALRec's effort score: how hard a sample is for the LLM to learn.

E(s) = || d L_LLM(s) / d theta ||_2, theta a subset of the LoRA parameters (config
`selection.dealrec.effort.params`): `last_v_proj_B`, the lora_B matrix of the last layer's v_proj
(the authors'), or `all` LoRA matrices. The LoRA (`effort.adapter`) is
- null: a fresh one on the base model (the sft block's rank, alpha, dropout and target modules,
  seeded). lora_B is zero, so every lora_A gradient is zero too and only the B matrices carry effort;
- `sft`: the trained sft adapter of the same dataset (the authors measure effort on a LoRA trained
  on the data), whose folder the rule passes as `--adapter` (this module does not know the layout);
- any other string: that PEFT adapter folder.
L_LLM(s) is the sample's mean token cross-entropy over prompt and answer (`loss_tokens: all`, as the
authors: a causal-LM loss on the whole sequence) or over the answer tokens only (`answer`, the SFT
loss).

Mode (`effort.mode`): `eval` (the default) runs without LoRA dropout, so a score does not depend on
its batch. `train` is the authors' (their Trainer computes the gradients in train mode): each
sample's LoRA input goes through dropout (the adapter's lora_dropout: the authors' 0.05; the
schema's sft default 0.05, config/config.yaml's 0), drawn from torch's RNG seeded with the stage's
seed before scoring, so a run is reproducible but a sample's score depends on its batch and the
order of batches (the masks it is given) and on the device. The base model's own dropout is 0 for
Llama-family configs (attention_dropout), so with lora_dropout 0 the two modes give the same numbers
(tests check it).

Batched per-sample gradient norms (opacus-style, for linear layers): a LoRA matrix W [out, in] is
applied as y = x W^T, so sample b's gradient is sum_t g_bt^T x_bt, with x the layer's input and g the
gradient of the summed per-sample losses w.r.t. its output y (a sample's loss depends on its own row
only). One forward and one `torch.autograd.grad` per batch give every sample's gradient; the
parameters' .grad is never touched, and only the tracked matrices require gradients, so the
backward pass stops at the earliest of them (for `last_v_proj_B`: the last layer). Padding gets
zero output gradient, so it adds nothing. `effort_loop` is the one-backward-per-sample reference
(tests and bench/bench_effort.py check both agree).

The candidates are every train sample or a seeded `max_candidates` of them (`candidate_pool`): the
LLM pass is the expensive part of DEALRec on a CPU.

    python -m workflow.selection.effort --model-dir results/models/base --samples .../samples.parquet \
        --items .../items.parquet --spec '{"llm": {...}, "sft": {...}, "selection": {...}, "domain": "movie"}' \
        --seed 42 --threads 1 --out .../selection/effort.parquet [--adapter .../sft-candidate/all/adapter]

Output: sample_id, effort (float64), tokens (the sequence length the loss ran on), sorted by sample_id.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from workflow import cli
from workflow.io import write_parquet
from workflow.selection.random_subset import candidate_pool, train_ids

log = logging.getLogger(__name__)

PARAM_SUBSETS = ("last_v_proj_B", "all")
LOSS_TOKENS = ("all", "answer")
MODES = ("eval", "train")
SFT_ADAPTER = "sft"  # effort.adapter value: the adapter folder comes from the rule (--adapter)
SCHEMA = pa.schema([("sample_id", pa.string()), ("effort", pa.float64()), ("tokens", pa.int64())])

# (model, prompt ids, answer ids) -> per-sample losses [B]
LossFn = Callable[[torch.nn.Module, Sequence[Sequence[int]], Sequence[Sequence[int]]], torch.Tensor]


# ----------------------------------------------------------------------------- parameters

def lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every PEFT LoRA layer (a module holding lora_A / lora_B), in model order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and len(m.lora_A)]


def tracked_matrices(model: torch.nn.Module, params: str) -> dict[str, torch.nn.Linear]:
    """The LoRA matrices (as their nn.Linear modules) whose gradient the effort measures."""
    if params not in PARAM_SUBSETS:
        raise ValueError(f"config key 'selection.dealrec.effort.params': {params!r} is not one of {PARAM_SUBSETS}")
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers")
    if params == "last_v_proj_B":
        v_proj = [(n, m) for n, m in layers if n.split(".")[-1] == "v_proj"]
        if not v_proj:
            raise ValueError("config key 'selection.dealrec.effort.params': last_v_proj_B needs a LoRA on "
                             "v_proj (add it to sft.target_modules)")
        name, layer = v_proj[-1]
        adapter = next(iter(layer.lora_B))
        return {f"{name}.lora_B.{adapter}": layer.lora_B[adapter]}
    out = {}
    for name, layer in layers:
        for adapter in layer.lora_A:
            out[f"{name}.lora_A.{adapter}"] = layer.lora_A[adapter]
            out[f"{name}.lora_B.{adapter}"] = layer.lora_B[adapter]
    return out


def require_grad_only(model: torch.nn.Module, matrices: dict[str, torch.nn.Linear]) -> None:
    """Gradients for the tracked matrices only, so backward passes stop as early as they can."""
    model.requires_grad_(False)
    for m in matrices.values():
        if m.bias is not None:
            raise ValueError("LoRA matrices with a bias are not supported")
        m.weight.requires_grad_(True)


# ----------------------------------------------------------------------------- losses

def answer_token_losses(model, prompt_ids, answer_ids) -> torch.Tensor:
    """Per sample: the mean negative log-likelihood of the answer tokens (the SFT loss)."""
    from workflow.llm.scoring import answer_logprobs

    logp, n = answer_logprobs(model, prompt_ids, answer_ids)
    return -logp / n


def all_token_losses(model, prompt_ids, answer_ids) -> torch.Tensor:
    """Per sample: the mean next-token cross-entropy over the whole prompt + answer sequence (a
    causal-LM loss with labels = input ids, as the authors compute it), right-padded batch."""
    rows = [list(p) + list(a) for p, a in zip(prompt_ids, answer_ids)]
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets, valid = ids[:, 1:], mask[:, 1:].bool()
    token_loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return (token_loss * valid).sum(1) / valid.sum(1)


LOSSES: dict[str, LossFn] = {"all": all_token_losses, "answer": answer_token_losses}


def loss_fn(loss_tokens: str) -> LossFn:
    if loss_tokens not in LOSSES:
        raise ValueError(f"config key 'selection.dealrec.effort.loss_tokens': {loss_tokens!r} is not one of "
                         f"{LOSS_TOKENS}")
    return LOSSES[loss_tokens]


# ----------------------------------------------------------------------------- gradient norms

def batch_grad_norms(model, matrices: dict[str, torch.nn.Linear], losses: LossFn, prompt_ids, answer_ids,
                     autocast=None) -> torch.Tensor:
    """Per-sample gradient norms [B] of the tracked matrices, from one forward and one backward."""
    import contextlib

    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name):
        def hook(module, inputs, output):
            if name in seen:
                raise RuntimeError(f"{name} ran twice in one forward pass; per-sample norms need one call")
            seen[name] = (inputs[0].detach(), output)
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in matrices.items()]
    try:
        with autocast() if autocast else contextlib.nullcontext():
            per_sample = losses(model, prompt_ids, answer_ids)
    finally:
        for h in handles:
            h.remove()
    names = [n for n in matrices if n in seen]
    if not names:
        raise RuntimeError("no tracked LoRA matrix ran in the forward pass")
    output_grads = torch.autograd.grad(per_sample.sum(), [seen[n][1] for n in names], allow_unused=True)
    squared = torch.zeros(len(prompt_ids), dtype=torch.float64)
    for name, g in zip(names, output_grads):
        if g is None:  # the output does not reach the loss: a zero gradient
            continue
        x = seen[name][0]
        grad = torch.einsum("bto,bti->boi", g.float(), x.float())  # per-sample dL/dW [B, out, in]
        squared += grad.pow(2).sum((1, 2)).double().cpu()
    return squared.sqrt()


def effort_loop(model, matrices: dict[str, torch.nn.Linear], losses: LossFn, prompt_ids, answer_ids,
                autocast=None) -> torch.Tensor:
    """The reference: one forward and one backward per sample, norms read from the parameters' .grad."""
    import contextlib

    norms = []
    for p, a in zip(prompt_ids, answer_ids):
        for m in matrices.values():
            m.weight.grad = None
        with autocast() if autocast else contextlib.nullcontext():
            loss = losses(model, [p], [a])[0]
        loss.backward()
        squared = sum(float(m.weight.grad.double().pow(2).sum()) for m in matrices.values()
                      if m.weight.grad is not None)
        norms.append(squared ** 0.5)
    for m in matrices.values():
        m.weight.grad = None
    return torch.tensor(norms, dtype=torch.float64)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Positions grouped into batches of similar length (little padding), longest first."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def effort_scores(model, matrices, losses: LossFn, examples: Sequence[dict[str, list[int]]], batch_size: int,
                  autocast=None, desc: str = "effort") -> np.ndarray:
    """E(s) of every example ({"prompt", "answer"} ids), in the examples' order."""
    lengths = [len(e["prompt"]) + len(e["answer"]) for e in examples]
    out = np.zeros(len(examples), dtype=np.float64)
    with tqdm(total=len(examples), desc=desc, unit="sample", mininterval=5) as bar:
        for batch in length_batches(lengths, batch_size):
            norms = batch_grad_norms(model, matrices, losses, [examples[i]["prompt"] for i in batch],
                                     [examples[i]["answer"] for i in batch], autocast)
            out[batch] = norms.numpy()
            bar.update(len(batch))
    return out


# ----------------------------------------------------------------------------- stage

def settings(spec: dict[str, Any]) -> dict[str, Any]:
    """{llm, sft, selection, domain, prompt} from --spec, validated with defaults (config/schema.yaml)."""
    from workflow.config import stage_settings

    return stage_settings(spec, {"llm": "llm", "sft": "sft", "selection": "selection"})


def resolve_adapter(configured: str | None, given: str | Path | None) -> str | None:
    """The adapter folder to measure on: `effort.adapter` itself (null = a fresh LoRA, or a path), or,
    for `sft`, the folder the rule gives as --adapter."""
    if configured == SFT_ADAPTER:
        if given is None:
            raise ValueError("config key 'selection.dealrec.effort.adapter' is 'sft': the sft adapter folder must "
                             "be given (--adapter)")
        return str(given)
    if given is not None:
        raise ValueError(f"--adapter is for config key 'selection.dealrec.effort.adapter': sft (it is "
                         f"{configured!r})")
    return configured


def prepare_model(model_dir, s: dict[str, Any], seed: int, adapter: str | Path | None = None):
    """(model, tokenizer, tracked matrices, autocast factory): the base model with a fresh seeded
    LoRA (sft block's settings) or the adapter (`resolve_adapter`), frozen linears in the compute
    dtype, in `effort.mode` (eval or train)."""
    from workflow.llm import train
    from workflow.llm.model import autocast, cast_frozen_linears, load_model, resolve_device, resolve_dtype

    llm, effort = s["llm"], s["selection"]["dealrec"]["effort"]
    folder = resolve_adapter(effort["adapter"], adapter)
    if effort["mode"] not in MODES:
        raise ValueError(f"config key 'selection.dealrec.effort.mode': {effort['mode']!r} is not one of {MODES}")
    model, tokenizer = load_model(model_dir, device=llm["device"], dtype=llm["dtype"], attention=llm["attention"])
    if folder:
        from peft import PeftModel

        if not (Path(folder) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"config key 'selection.dealrec.effort.adapter': {folder} is not a "
                                    "PEFT adapter folder (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, folder, is_trainable=True)
    else:
        model = train.add_lora(model, s["sft"], seed)
    device = resolve_device(llm["device"])
    cast_frozen_linears(model, resolve_dtype(llm["dtype"], device))
    model.train(effort["mode"] == "train")
    matrices = tracked_matrices(model, effort["params"])
    require_grad_only(model, matrices)
    return model, tokenizer, matrices, lambda: autocast(device, llm["dtype"])


def run_effort(model_dir, samples_path, items_path, spec: dict[str, Any], seed: int, out,
               adapter: str | Path | None = None) -> pd.DataFrame:
    """Effort scores of the candidate pool, written to `out` (see the module docstring); `adapter`
    is the sft adapter folder when `effort.adapter` is `sft`."""
    from workflow.llm.data import sft_examples

    s = settings(spec)
    effort = s["selection"]["dealrec"]["effort"]
    samples = pd.read_parquet(samples_path)
    pool = candidate_pool(train_ids(samples), effort["max_candidates"], seed)
    samples = samples.assign(sample_id=samples["sample_id"].astype(str))
    samples = samples.set_index("sample_id").loc[pool].reset_index()
    items = pd.read_parquet(items_path, columns=["item_id", "title"])
    model, tokenizer, matrices, autocast = prepare_model(model_dir, s, seed, adapter)
    examples = sft_examples(samples, items, tokenizer, s["domain"], s["llm"], s["prompt"])
    log.info("effort of %d candidates (%s prompt, loss over %s tokens, %s mode, %s) on %s: %d parameters, batch %d",
             len(examples), s["prompt"], effort["loss_tokens"], effort["mode"], adapter or effort["adapter"] or
             "fresh LoRA", ", ".join(matrices), sum(m.weight.numel() for m in matrices.values()), effort["batch_size"])
    torch.manual_seed(seed)  # train mode: the LoRA dropout masks
    started, cpu_started = time.perf_counter(), time.process_time()
    scores = effort_scores(model, matrices, loss_fn(effort["loss_tokens"]), examples, effort["batch_size"], autocast)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    log.info("%d samples in %.1fs (%.2f samples per CPU-second); effort quantiles %s", len(examples), wall,
             len(examples) / max(cpu, 1e-9), np.round(np.quantile(scores, [0, 0.25, 0.5, 0.75, 1]), 5).tolist())
    table = pd.DataFrame({"sample_id": pool, "effort": scores,
                          "tokens": [len(e["prompt"]) + len(e["answer"]) for e in examples]})
    table = table.sort_values("sample_id", kind="stable").reset_index(drop=True)
    write_parquet(table, out, schema=SCHEMA, seed=seed,
                  config={"effort": effort, "adapter": None if adapter is None else str(adapter),
                          "llm": s["llm"], "prompt": s["prompt"], "domain": s["domain"],
                          "lora": {k: s["sft"][k] for k in ("lora_r", "lora_alpha", "target_modules")}},
                  seconds=round(wall, 3), cpu_seconds=round(cpu, 3))
    return table


def main(argv=None) -> int:
    p = cli.parser("DEALRec effort scores: per-sample LoRA gradient norms of the LLM loss.")
    p.add_argument("--model-dir", required=True, help="the base model folder (rule base_model)")
    p.add_argument("--samples", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--spec", type=cli.json_arg, required=True,
                   help='JSON {"llm": {...}, "sft": {...}, "selection": {...}, "domain": "movie", "prompt": "open"}')
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--adapter", default=None,
                   help="the sft adapter folder, when config key selection.dealrec.effort.adapter is `sft`")
    return cli.run(lambda a: run_effort(a.model_dir, a.samples, a.items, a.spec, a.seed, a.out, a.adapter), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
