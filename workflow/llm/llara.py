"""LLaRA's hybrid prompt, and the LLaRA and iLoRA runs trained on it (DESIGN section 5).

Hybrid prompt: every title the prompt lists (history; and candidates under the candidate prompt) is
followed by one placeholder token, whose input embedding is replaced by projector(e_i), e_i the
SASRec item-embedding row of that item and projector = Linear(d, H) - GELU - Linear(H, H_llm).
LLaRA adds a new `[HistoryEmb]` token; we reuse a special token the base vocabulary already holds and
never emits in titles (PLACEHOLDER), so embeddings and the LM head keep their shapes and a PEFT adapter
stays a plain PEFT adapter. When the oldest history titles are dropped to fit the prompt budget, so are
their placeholders: the items of a prompt are read back from its placeholder count (`prompt_items`).

The replacement is the scorer's `inputs_embeds_fn` plug-in: the packed training scorer, the prompt
cache of evaluation (`scoring.encode_prompts`; generation then continues from that cache and never
feeds a placeholder) both take it (the explanations stage does not yet).

Curriculum: each optimizer step is hybrid with probability step / total_steps (seeded per step, so
a resumed run draws the same), else text-only: the placeholders stay ordinary token embeddings and
the projector gets no gradient. `authors` is the schedule the authors' code runs (a dataloader-worker
quirk: the ramp restarts every epoch and tops out at 1 / epochs; `hybrid_probability` derives it),
`per_epoch` restarts the full 0-to-1 ramp every epoch, `hybrid` always uses it. Evaluation is always
hybrid.

`llara` trains a PEFT LoRA; `ilora` the mixture of experts of workflow/llm/ilora.py, whose gate reads
the sample's SASRec sequence representation (`sequence`), a fixed random vector per sample (`random`)
or nothing (`uniform`). Both train a fresh adapter on the base model with SFT's loss (answer tokens).

Adapter folder: llara = the PEFT adapter + projector.safetensors; ilora = experts.safetensors (+
router.safetensors); both hybrid.json (what to rebuild), training_config.json, train_log.parquet.
"""
from __future__ import annotations

import contextlib
import json
import logging
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from workflow import cli
from workflow.io import write_json
from workflow.llm import ilora, stage, train
from workflow.llm.scoring import EmbedsFn
from workflow.methods import CURRICULA, gate_reads_inputs  # declared without torch (the schema's enums)
from workflow.runs import HYBRID

log = logging.getLogger("workflow.llm.llara")

PLACEHOLDER = "<empty_output>"  # a SmolLM2 special token titles never contain
HYBRID_FILE = "hybrid.json"


# ----------------------------------------------------------------------------- the hybrid prompt

def placeholder_id(tokenizer) -> int:
    ids = tokenizer.encode(f" {PLACEHOLDER}", add_special_tokens=False)
    single = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    if single is None or single == tokenizer.unk_token_id or single not in ids:
        raise ValueError(f"the tokenizer has no single token {PLACEHOLDER!r} for the hybrid prompt's placeholder")
    return int(single)


def prompt_items(prompt_ids: Sequence[int], marker_id: int, history: Sequence[str], candidates: Sequence[str],
                 prompt: str) -> list[str]:
    """The items whose placeholders a rendered prompt holds, in prompt order: the last history items
    that fit (the oldest are dropped first), then the candidates under the candidate prompt."""
    count = sum(1 for t in prompt_ids if t == marker_id)
    listed = len(candidates) if prompt == "candidate" else 0
    kept = count - listed
    if kept < 1 or kept > len(history):
        raise ValueError(f"a hybrid prompt holds {count} placeholders for {len(history)} history items "
                         f"and {listed} listed candidates")
    return [*history[len(history) - kept:], *(candidates if prompt == "candidate" else [])]


def build_projector(d: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, out))


def placeholder_embeds(projector: nn.Module, item_vectors: torch.Tensor, rows: Sequence[Sequence[int]],
                       marker_id: int) -> EmbedsFn:
    """The scorer's `inputs_embeds_fn`: row b's placeholders, in order, get projector(item_vectors[rows[b]])."""
    index = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    expected = torch.tensor([len(r) for r in rows])

    def replace(input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        mask = input_ids == marker_id
        found = mask.sum(dim=1).cpu()
        if not torch.equal(found, expected):
            raise ValueError(f"placeholders per row {found.tolist()} differ from the items given {expected.tolist()}")
        vectors = projector(item_vectors[index.to(item_vectors.device)]).to(embeds.dtype)
        # masked_scatter fills the masked positions in row-major order: row b's placeholders in order
        return embeds.masked_scatter(mask[..., None], vectors)

    return replace


def hybrid_probability(step: int, total: int, steps_per_epoch: int, curriculum: str) -> float:
    """The chance that optimizer step `step` (0-based) of `total` uses the hybrid prompt.

    - `linear` (the default, the intended schedule): step / total, 0 to 1 over the whole run.
    - `authors`: what the LLaRA/iLoRA code actually runs, (step_in_epoch / steps_per_epoch) / epochs.
      Derivation: their collator draws hybrid with probability cur_step / (max_steps / W), cur_step a
      counter inside each of the W = 8 data-loader workers (each worker holds max_steps / W of the
      run's steps). The workers are not persistent, so every epoch starts fresh ones with
      cur_step = 0; within an epoch a worker makes its (steps_per_epoch / W) batches in turn, so at
      step i of the epoch the counter is about i / W and the probability
      (i / W) / (epochs * steps_per_epoch / W) = (i / steps_per_epoch) / epochs. It restarts every
      epoch and tops out just under 1 / epochs: about 1 / (2 epochs) hybrid batches overall (10% at
      their 5 epochs). We drop the per-worker rounding (W and the order batches leave the workers).
    - `per_epoch`: step_in_epoch / steps_per_epoch, the 0-to-1 ramp restarted every epoch (not the
      authors': theirs never passes 1 / epochs).
    - `hybrid`: always 1.
    """
    if curriculum == "hybrid":
        return 1.0
    if curriculum == "linear":
        return step / total
    if curriculum == "per_epoch":
        return (step % steps_per_epoch) / steps_per_epoch
    if curriculum == "authors":
        epochs = max(1, total // steps_per_epoch)  # train.train runs total = epochs * steps_per_epoch
        return (step % steps_per_epoch) / steps_per_epoch / epochs
    raise ValueError(f"unknown curriculum {curriculum!r} (known: {', '.join(CURRICULA)})")


def is_hybrid_step(step: int, probability: float, seed: int) -> bool:
    return bool(np.random.default_rng([seed, step, 0x11A2A]).random() < probability)


# ----------------------------------------------------------------------------- SASRec inputs

def read_item_vectors(surrogate_dir: str | Path) -> tuple[dict[str, int], torch.Tensor]:
    """(item id -> row, [n_items, d] float32) from the surrogate's item_embeddings.parquet."""
    path = Path(surrogate_dir) / "item_embeddings.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no SASRec item embeddings (run the surrogate stage)")
    table = pd.read_parquet(path)
    vectors = torch.tensor(np.stack(table["embedding"].to_numpy()), dtype=torch.float32)
    return {str(i): r for r, i in enumerate(table["item_id"])}, vectors


def read_sequence_vectors(surrogate_dir: str | Path, sample_ids: Sequence[str]) -> np.ndarray:
    """[N, d] SASRec sequence representations of the samples (sequence_repr.parquet)."""
    path = Path(surrogate_dir) / "sequence_repr.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no SASRec sequence representations (run the surrogate stage)")
    table = pd.read_parquet(path)
    row = {str(s): i for i, s in enumerate(table["sample_id"])}
    missing = [s for s in sample_ids if s not in row]
    if missing:
        raise ValueError(f"{path}: no representation of sample '{missing[0]}'")
    return np.stack(table["repr"].to_numpy()[[row[s] for s in sample_ids]]).astype(np.float32)


def random_gate_inputs(sample_ids: Sequence[str], d: int) -> np.ndarray:
    """The `random` gate's input: a fixed standard-normal vector per sample (seeded by its id)."""
    return np.stack([np.random.default_rng(zlib.crc32(s.encode())).standard_normal(d) for s in sample_ids]
                    ).astype(np.float32)


def gate_inputs(gate: str, surrogate_dir: str | Path, sample_ids: Sequence[str], d: int) -> np.ndarray | None:
    if gate == "sequence":
        return read_sequence_vectors(surrogate_dir, sample_ids)
    if gate == "random":
        return random_gate_inputs(sample_ids, d)
    if gate == "uniform":
        return None
    raise ValueError(f"config key 'ilora.gate': unknown gate {gate!r} (known: sequence, random, uniform)")


# ----------------------------------------------------------------------------- the model's parts

class Hybrid(NamedTuple):
    """What a hybrid run adds to the LLM: the projector, the item table, and for iLoRA the router."""
    method: str
    marker_id: int
    item_row: dict[str, int]
    item_vectors: torch.Tensor
    projector: nn.Module
    router: nn.Module | None = None
    n_experts: int = 1
    gate: str = "sequence"

    def embeds_fn(self, items: Sequence[Sequence[str]]) -> EmbedsFn:
        return placeholder_embeds(self.projector, self.item_vectors, [[self.item_row[i] for i in r] for r in items],
                                  self.marker_id)

    def gates(self, inputs: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        if self.method != "ilora":
            return None
        router_inputs = None if inputs is None else inputs.to(device)
        return ilora.gate_weights(self.router, router_inputs, self.n_experts, batch).to(device)

    def context(self, model, gates: torch.Tensor | None, training: bool = False):
        """The gate installed for the calls inside the block; in training it stays installed for
        the micro-batch's backward (gradient checkpointing recomputes the layers there)."""
        return ilora.experts_gate(model, gates, keep=training) if gates is not None else contextlib.nullcontext()


def hybrid_config(method: str, block: dict[str, Any], d: int, hidden_llm: int) -> dict[str, Any]:
    cfg = {"method": method, "d": d, "projector_hidden": block.get("projector_hidden") or hidden_llm,
           "hidden": hidden_llm, "placeholder": PLACEHOLDER}
    if method == "ilora":
        cfg |= {"n_experts": int(block["n_experts"]), "gate": block["gate"], "router": block["router"],
                "lora_r": int(block["lora_r"]), "lora_alpha": float(block["lora_alpha"]),
                "lora_dropout": float(block["lora_dropout"]), "target_modules": list(block["target_modules"])}
    return cfg


def build_parts(cfg: dict[str, Any], tokenizer, surrogate_dir: str | Path,
                item_table: tuple[dict[str, int], torch.Tensor] | None = None) -> Hybrid:
    """The projector (and router) of `cfg`, freshly initialised, with the surrogate's item table
    (`read_item_vectors`, read here unless the caller has it)."""
    item_row, vectors = item_table or read_item_vectors(surrogate_dir)
    if vectors.shape[1] != cfg["d"]:
        raise ValueError(f"{surrogate_dir}: item embeddings of size {vectors.shape[1]}, the adapter expects {cfg['d']}")
    projector = build_projector(cfg["d"], cfg["projector_hidden"], cfg["hidden"])
    router = None
    if cfg["method"] == "ilora" and gate_reads_inputs(cfg["gate"]):
        router = ilora.build_router(cfg["router"], cfg["d"], cfg["n_experts"])
    experts = {"n_experts": cfg["n_experts"], "gate": cfg["gate"]} if cfg["method"] == "ilora" else {}
    return Hybrid(cfg["method"], placeholder_id(tokenizer), item_row, vectors, projector, router, **experts)


def attach(method: str, model: nn.Module, block: dict[str, Any], cfg: dict[str, Any], tokenizer,
           surrogate_dir: str | Path, item_table: tuple[dict[str, int], torch.Tensor] | None,
           seed: int) -> tuple[nn.Module, Hybrid]:
    """What a llara or ilora run trains, attached to `model`: a PEFT LoRA or the experts, then the
    projector (and router) as submodules. Everything is created on the model's device (no move
    after attaching; a 7B model is already on its GPU); initial weights depend on `seed` only."""
    from workflow.llm.model import model_device

    if method == "llara":
        model = train.add_lora(model, block, seed)
    else:
        ilora.add_experts(model, block, int(block["n_experts"]), seed)
    device = model_device(model)
    torch.manual_seed(seed + 1)  # the projector's and router's initial weights: a function of the seed
    with torch.device(device):
        parts = build_parts(cfg, tokenizer, surrogate_dir, item_table)
    parts = parts._replace(item_vectors=parts.item_vectors.to(device))
    model.add_module("hybrid_projector", parts.projector)
    if parts.router is not None:
        model.add_module("ilora_router", parts.router)
    return model, parts


def load_for_evaluation(model_dir, adapter, surrogate_dir, device="auto", dtype="auto", attention="auto",
                        quantization="none"):
    """(model, tokenizer, Hybrid) of a trained llara or ilora adapter folder, in eval mode."""
    from safetensors.torch import load_file

    from workflow.llm.model import (cast_frozen_linears, load_for_evaluation as load_peft, load_model, model_device,
                                    resolve_dtype)

    adapter = Path(adapter)
    path = adapter / HYBRID_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{adapter}: not a llara/ilora adapter folder (no {HYBRID_FILE})")
    cfg = json.loads(path.read_text())
    if cfg["method"] == "llara":
        model, tokenizer = load_peft(model_dir, adapter, device, dtype, attention, quantization)
    else:
        model, tokenizer = load_model(model_dir, device=device, dtype=dtype, attention=attention, training=False,
                                      quantization=quantization)
        ilora.add_experts(model, cfg, cfg["n_experts"], seed=0)
        missing = set(ilora.expert_state(model)) ^ set(weights := load_file(adapter / "experts.safetensors"))
        if missing:
            raise ValueError(f"{adapter}/experts.safetensors: expert weights do not match the model "
                             f"({sorted(missing)[:3]})")
        model.load_state_dict(weights, strict=False)
        model.requires_grad_(False)
        cast_frozen_linears(model, resolve_dtype(dtype, model_device(model)))
        model.eval()
    device = model_device(model)
    with torch.device(device):
        parts = build_parts(cfg, tokenizer, surrogate_dir)
    parts.projector.load_state_dict(load_file(adapter / "projector.safetensors"))
    if parts.router is not None:
        parts.router.load_state_dict(load_file(adapter / "router.safetensors"))
    for module in (parts.projector, parts.router):
        if module is not None:
            module.eval().requires_grad_(False)
    return model, tokenizer, parts._replace(item_vectors=parts.item_vectors.to(device))


def evaluation_hooks(parts: Hybrid, model, samples: pd.DataFrame, prompt_ids: Sequence[Sequence[int]], prompt: str,
                     surrogate_dir: str | Path):
    """`sample_hooks(rows) -> (inputs_embeds_fn, context manager)` for evaluate.prompt_passes: the
    placeholders of those samples' prompts and, for iLoRA, their gate installed on the experts."""
    items = [prompt_items(ids, parts.marker_id, list(map(str, h)), list(map(str, c)), prompt)
             for ids, h, c in zip(prompt_ids, samples["history"], samples["candidates"])]
    ids = samples["sample_id"].astype(str).tolist()
    inputs = (gate_inputs(parts.gate, surrogate_dir, ids, parts.item_vectors.shape[1])
              if parts.method == "ilora" else None)
    device = parts.item_vectors.device

    def hooks(rows: Sequence[int]):
        gate_in = None if inputs is None else torch.from_numpy(inputs[list(rows)])
        with torch.no_grad():
            gates = parts.gates(gate_in, len(rows), device)
        return parts.embeds_fn([items[r] for r in rows]), parts.context(model, gates)

    return hooks


# ----------------------------------------------------------------------------- training

def settings(method: str, spec: dict[str, Any]) -> dict[str, Any]:
    """{llm, <method>, domain, prompt, budget} from --spec, validated and completed by config/schema.yaml."""
    from workflow.config import stage_settings

    if method not in HYBRID:
        raise ValueError(f"unknown hybrid method {method!r} (known: {', '.join(HYBRID)})")
    return stage_settings(spec, {"llm": "llm", method: method})


def hybrid_examples(samples: pd.DataFrame, items: pd.DataFrame, tokenizer, domain: str, llm: dict, prompt: str,
                    marker_id: int) -> list[dict[str, Any]]:
    """SFT's examples on the hybrid prompt, each with the items of its placeholders and its sample id."""
    from workflow.llm.data import sft_examples

    examples = sft_examples(samples, items, tokenizer, domain, llm, prompt, item_marker=PLACEHOLDER)
    for example, row in zip(examples, samples.itertuples(index=False)):
        example["items"] = prompt_items(example["prompt"], marker_id, list(map(str, row.history)),
                                        list(map(str, row.candidates)), prompt)
        example["sample_id"] = str(row.sample_id)
    return examples


def make_loss_fn(parts: Hybrid, state: dict[str, Any]):
    """SFT's loss on the hybrid (or, by the curriculum, text-only) prompt, under the sample's gate."""
    from workflow.llm.scoring import answer_logprobs

    def loss_fn(model, batch):
        embeds_fn = parts.embeds_fn(batch["items"]) if state["hybrid"] else None
        device = parts.item_vectors.device
        gates = parts.gates(batch["gate_inputs"], len(batch["prompts"]), device)
        with parts.context(model, gates, training=True):
            logprob, n_tokens = answer_logprobs(model, batch["prompts"], batch["answers"], inputs_embeds_fn=embeds_fn)
        total = n_tokens.sum()
        processed = sum(len(p) + len(a) - 1 for p, a in zip(batch["prompts"], batch["answers"]))
        return -logprob.sum() / total, total, {"tokens": processed, "hybrid": float(state["hybrid"])}

    return loss_fn


def param_options(block: dict[str, Any]) -> Callable[[str], dict[str, float]]:
    """train.train's per-parameter options: the projector's weight decay; the router's lr scale and
    weight decay (the authors: 0.3 x lr, weight decay 1e-5 on both); the LoRA keeps the block's."""
    def options(name: str) -> dict[str, float]:
        if name.startswith("hybrid_projector"):
            return {"weight_decay": float(block["projector_weight_decay"])}
        if name.startswith("ilora_router"):
            return {"lr_scale": float(block["router_lr_scale"]), "weight_decay": float(block["router_weight_decay"])}
        return {}

    return options


def collate_with(gate_vectors: dict[str, np.ndarray] | None) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        inputs = None
        if gate_vectors is not None:
            inputs = torch.from_numpy(np.stack([gate_vectors[e["sample_id"]] for e in examples]))
        return {"prompts": [e["prompt"] for e in examples], "answers": [e["answer"] for e in examples],
                "items": [e["items"] for e in examples], "gate_inputs": inputs}

    return collate


def hybrid_method(method: str, block: dict[str, Any], llm: dict[str, Any], domain: str, prompt: str,
                  surrogate_dir: str | Path, seed: int) -> stage.Method:
    """llara / ilora as a training stage: `attach` adds the LoRA (or the experts), the projector and
    the router; the plan trains SFT's loss on the hybrid prompt with the curriculum's step hook."""
    from safetensors.torch import save_file

    item_row, vectors = read_item_vectors(surrogate_dir)
    built: dict[str, Any] = {}

    def attach_parts(model, tokenizer):
        built["cfg"] = cfg = hybrid_config(method, block, vectors.shape[1], model.config.hidden_size)
        model, built["parts"] = attach(method, model, block, cfg, tokenizer, surrogate_dir, (item_row, vectors), seed)
        return model

    def plan(loaded: stage.Loaded) -> stage.Plan:
        model, parts, cfg = loaded.model, built["parts"], built["cfg"]
        examples = hybrid_examples(loaded.samples, loaded.items, loaded.tokenizer, domain, llm, prompt, parts.marker_id)
        unknown = sorted({i for e in examples for i in e["items"]} - item_row.keys())
        if unknown:
            raise ValueError(f"{surrogate_dir}: no SASRec embedding of item '{unknown[0]}'")
        gate_vectors = None
        if method == "ilora" and gate_reads_inputs(parts.gate):
            ids = [e["sample_id"] for e in examples]
            gate_vectors = dict(zip(ids, gate_inputs(parts.gate, surrogate_dir, ids, cfg["d"])))
        log.info("%s on %d samples, %s prompt (hybrid), %d epochs%s", method, len(examples), prompt, block["epochs"],
                 f", {parts.n_experts} experts, {parts.gate} gate" if method == "ilora" else "")
        per_epoch = train.steps_per_epoch(len(examples), int(block["batch_size"]), int(block["grad_accum"]))
        state = {"hybrid": True}

        def step_start(step: int, total: int) -> None:
            probability = hybrid_probability(step, total, per_epoch, block["curriculum"])
            state["hybrid"] = is_hybrid_step(step, probability, seed)

        def save_weights(folder: Path) -> None:
            if method == "llara":
                model.save_pretrained(folder, safe_serialization=True)
            else:
                save_file(ilora.expert_state(model), folder / "experts.safetensors")
            save_file({k: v.detach().cpu().contiguous() for k, v in parts.projector.state_dict().items()},
                      folder / "projector.safetensors")
            if parts.router is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in parts.router.state_dict().items()},
                          folder / "router.safetensors")
            write_json(cfg, folder / HYBRID_FILE)

        return stage.Plan(examples, collate_with(gate_vectors), make_loss_fn(parts, state),
                          train.Hooks(param_options=param_options(block), step_start=step_start), save_weights,
                          fingerprint={"surrogate": str(surrogate_dir), "hybrid": cfg},
                          config={"surrogate": str(surrogate_dir)})

    return stage.Method(method, block, attach_parts, plan)


def run_hybrid(method: str, model_dir: str | Path, samples_path: str | Path, items_path: str | Path,
               selection_path: str | Path, surrogate_dir: str | Path, spec: dict[str, Any], seed: int,
               out: str | Path) -> Path:
    """Train a llara or ilora adapter (module docstring) and save it to `out`."""
    s = settings(method, spec)
    llm, block, domain, prompt = s["llm"], s[method], s["domain"], s["prompt"]
    train_log = stage.run_stage(hybrid_method(method, block, llm, domain, prompt, surrogate_dir, seed),
                                model_dir=model_dir, samples_path=samples_path, items_path=items_path,
                                selection_path=selection_path, llm=llm, seed=seed, out=out,
                                config={method: block, "domain": domain, "prompt": prompt, "budget": s["budget"]})
    log.info("%s: %d of %d steps on the hybrid prompt", method, int(train_log["hybrid"].sum()), len(train_log))
    return Path(out)


def main(argv=None) -> int:
    p = cli.parser("Train LLaRA (one LoRA) or iLoRA (gated LoRA experts) on the hybrid prompt.")
    p.add_argument("--method", required=True, choices=HYBRID)
    cli.add_training_arguments(p, "<method>")
    p.add_argument("--surrogate", required=True,
                   help="the surrogate folder (item embeddings, sequence representations)")
    return cli.run(lambda a: run_hybrid(a.method, a.model_dir, a.samples, a.items, a.selection, a.surrogate,
                                        a.spec, a.seed, a.out), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
