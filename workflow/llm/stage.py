"""One training-stage skeleton that every LLM training method fills in (sft, the preference methods,
llara / ilora, soft):

    samples -> base model (device, dtype, k-bit, checkpointing) -> the method's adapter (`attach`)
    -> frozen linears in the compute dtype -> the method's plan (`plan`: examples, collate, loss,
    hooks) -> the shared loop (`train.train`, checkpoints, data parallel) -> the adapter folder.

A method is a `Method`: its name, its training block (lr, epochs, batch_size, grad_accum, ...),
`attach(model, tokenizer) -> model` (creates what it trains on the model's device) and
`plan(Loaded) -> Plan`. The stage functions (`run_sft`, `run_preference`, `run_hybrid`, `run_soft`)
only read their own inputs and build these two.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from workflow.llm import train
from workflow.llm.data import read_training_samples

log = logging.getLogger("workflow.llm.stage")


@dataclass(frozen=True)
class Loaded:
    """What a method's plan is built from: the model with its adapter (frozen linears cast), and the
    stage's inputs."""
    model: nn.Module
    tokenizer: Any
    samples: pd.DataFrame
    items: pd.DataFrame
    device: torch.device
    dtype: torch.dtype
    checkpoint: Path  # the stage's checkpoint folder (a method may keep its own state there)
    fingerprint: dict[str, Any]  # what identifies the base model (part of the checkpoint's key)

    def autocast(self) -> contextlib.AbstractContextManager:
        from workflow.llm.model import autocast

        return autocast(self.device, self.dtype)


@dataclass(frozen=True)
class Plan:
    """What the loop trains with. `fingerprint` and `config` add the method's own keys to the
    checkpoint's key and to training_config.json, `summary(train_log)` what the run measured;
    `save_weights(folder)` replaces the PEFT save."""
    examples: list[Any]
    collate: Callable[[list[Any]], Any]
    loss_fn: train.LossFn
    hooks: train.Hooks = train.Hooks()
    save_weights: Callable[[Path], None] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: Callable[[pd.DataFrame], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Method:
    name: str
    block: dict[str, Any]
    attach: Callable[[nn.Module, Any], nn.Module]
    plan: Callable[[Loaded], Plan]


def run_stage(method: Method, *, model_dir: str | Path, samples_path: str | Path, items_path: str | Path,
              selection_path: str | Path, llm: dict[str, Any], seed: int, out: str | Path,
              config: dict[str, Any]) -> pd.DataFrame:
    """Train `method` on the selected samples and save its adapter to `out`; the per-step log."""
    from workflow.llm.model import add_item_tokens, cast_frozen_linears, load_for_training
    from workflow.semantic_ids import sid_tokens

    samples = read_training_samples(samples_path, selection_path)
    items = pd.read_parquet(items_path)
    items = items[[c for c in ("item_id", "title", "text") if c in items.columns]]  # text: the sid table's titles
    model, tokenizer, device, dtype = load_for_training(model_dir, llm)
    add_item_tokens(model, tokenizer, sid_tokens(items))  # the sid prompt's items are their semantic IDs
    model = method.attach(model, tokenizer)
    cast_frozen_linears(model, dtype)  # autocast's results without a cast per matmul
    checkpoint = train.checkpoint_dir_for(out)
    source = Path(model_dir) / "llmrec_source.json"
    base = {"model_dir": str(model_dir), "source": source.read_text() if source.exists() else None}
    loaded = Loaded(model, tokenizer, samples, items, device, dtype, checkpoint, base)
    plan = method.plan(loaded)
    train_log = train.train(model, plan.examples, plan.collate, plan.loss_fn, method.block, seed=seed,
                            checkpoint_dir=checkpoint, autocast=loaded.autocast, desc=method.name,
                            fingerprint_extra={**base, **plan.fingerprint}, hooks=plan.hooks,
                            scaler=train.grad_scaler(device, dtype), compile_mode=llm["compile"],
                            compile_cache=llm["compile_cache"])
    provenance = {"llm": llm, **config, "model_dir": str(model_dir), "samples": str(samples_path),
                  "selection": str(selection_path), "n_samples": len(plan.examples), **plan.config,
                  **(plan.summary(train_log) if plan.summary is not None else {}),
                  **({"validation": train_log.attrs["validation"]} if "validation" in train_log.attrs else {})}
    train.save_adapter(model, out, provenance, train_log, seed, save_weights=plan.save_weights)
    train.remove_checkpoint(checkpoint)
    last = train_log.tail(max(1, len(train_log) // 10))
    log.info("saved %s: %s, %d steps, final loss %.4f, %.0f tokens/s", out, method.name, len(train_log),
             last["loss"].mean(), train_log["tokens"].sum() / train_log["seconds"].sum())
    return train_log
