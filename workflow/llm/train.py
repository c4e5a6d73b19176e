"""The reusable LoRA training loop: SFT and the preference methods (DMPO, S-DPO, DynamicPO) plug in
their own `loss_fn(model, batch) -> (loss, n_tokens, diagnostics)` and share everything else.

What the loop does: AdamW with linear warmup and cosine decay, gradient accumulation that equals one
big batch (each micro-batch's mean loss is weighted by its `n_tokens`, gradients divided by the step's
total), gradient clipping, autocast (bf16 on CPU), fp16 loss scaling (a GradScaler when the compute
dtype is float16), a tqdm bar with loss and tokens/s, a per-step log, and checkpoints (trainable
weights, optimizer, scheduler, every rank's RNG states, data position) so that a killed job, rerun,
resumes and ends with the same adapter as an uninterrupted run.

Data parallel (`workflow.llm.distributed`, one process per GPU under torchrun): `grad_accum` is the
number of micro-batches of one optimizer step over all ranks; rank r computes micro-batches
r, r + N, ... of the step, and the gradient sums, the token-weight total and the logged sums are
added over ranks before the division. So the update does not depend on the number of ranks (up to
float summation order), and the global batch is batch_size * grad_accum whatever `llm.gpu` is;
grad_accum a multiple of the GPU count keeps every rank busy. Only rank 0 writes checkpoints and
adapters; every rank resumes from the same checkpoint.

Spec keys read (the `sft` config block, or a method block with the same names): lr, epochs,
batch_size, grad_accum, warmup_ratio, weight_decay, max_grad_norm, checkpoint_every;
`add_lora` reads lora_r, lora_alpha, lora_dropout, target_modules.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workflow.io import atomic_dir, atomic_path, write_json, write_parquet
from workflow.llm import compiling, distributed

log = logging.getLogger("workflow.llm.train")

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, int | float | torch.Tensor, dict[str, Any]]"]


@dataclass(frozen=True)
class Hooks:
    """A method's plug-ins into the loop (each optional; see `train`):
    - `param_options(name) -> {"lr_scale", "weight_decay"}` per trainable parameter (iLoRA's router
      at 0.3x the learning rate, the projector's weight decay); default: one group;
    - `step_start(global_step, total_steps)` before every optimizer step, global_step counted from 0
      (LLaRA's curriculum draws hybrid or text-only batches from it);
    - `epoch_start(epoch) -> dict of floats` before an epoch's first step (SOFT's lambda_e, measured
      on the current model): the values are logged with every step of the epoch and kept in the
      checkpoint, so a run resumed within the epoch uses them instead of measuring again;
    - `validate(epochs_done) -> dict of floats` after every epoch (SOFT's grounded HR@10 on the
      validation split): logged as `valid_<name>` with the epoch's steps and read by early stopping
      (the training block's `early_stopping`, `EarlyStopping`);
    - `state`: tensors the method's loss function updates in place as it goes (NAPO's moving average
      of its negatives' confidence): kept in the checkpoint and restored in place on resume, so a
      resumed run goes on from the same values. Under data parallel each rank keeps its own (the
      loss function sees only this rank's micro-batches)."""
    param_options: Callable[[str], dict[str, float]] | None = None
    step_start: Callable[[int, int], None] | None = None
    epoch_start: Callable[[int], dict[str, float]] | None = None
    validate: Callable[[int], dict[str, float]] | None = None
    state: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when `metric` of the `validate` hook has not risen above the best epoch's by more than
    `min_delta` for `patience` epochs; `keep` the best epoch's weights (the first best on a tie) or
    the last epoch's. `from_spec` reads the schema-completed block (soft.early_stopping); the field
    defaults are the schema's (a test holds them equal) for a caller that builds one itself."""
    metric: str
    patience: int = 2
    min_delta: float = 0.0
    keep: str = "best"

    @classmethod
    def from_spec(cls, spec: dict[str, Any], hooks: "Hooks") -> "EarlyStopping | None":
        cfg = spec.get("early_stopping")
        if not cfg:
            return None
        if hooks.validate is None:
            raise ValueError("early_stopping is set but the method has no validation (Hooks.validate)")
        if "metric" not in cfg:
            raise ValueError("early_stopping needs a metric (one the validate hook reports, e.g. hr@10)")
        keep = str(cfg["keep"])
        if keep not in ("best", "last"):
            raise ValueError(f"early_stopping.keep must be best or last, got {keep!r}")
        return cls(str(cfg["metric"]), int(cfg["patience"]), float(cfg["min_delta"]), keep)

    def improves(self, value: float, best: float | None) -> bool:
        return best is None or value > best + self.min_delta

    def should_stop(self, epochs_done: int, best_epoch: int) -> bool:
        return epochs_done - best_epoch >= self.patience


CHECKPOINT_FILE = "state.pt"


# ----------------------------------------------------------------------------- model and schedule

def add_lora(model: torch.nn.Module, spec: dict[str, Any], seed: int, tokenizer=None) -> torch.nn.Module:
    """Wrap `model` in a fresh PEFT LoRA adapter; its initial weights depend on `seed` only. Item ID
    tokens added to the vocabulary (`tokenizer`'s, workflow.llm.model.add_item_tokens) train
    beside it: their embedding rows (and the tied LM head's) by PEFT's trainable tokens, every other
    row frozen."""
    from peft import LoraConfig, get_peft_model

    from workflow.semantic_ids import item_token_ids

    added = item_token_ids(tokenizer) if tokenizer is not None else []
    cfg = LoraConfig(
        r=int(spec["lora_r"]), lora_alpha=float(spec["lora_alpha"]), lora_dropout=float(spec["lora_dropout"]),
        target_modules=list(spec["target_modules"]), task_type="CAUSAL_LM",
        **({"trainable_token_indices": {"embed_tokens": added}} if added else {}),
    )
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, cfg)
    except ValueError as exc:
        raise ValueError(f"config key 'target_modules' {list(spec['target_modules'])}: {exc}") from exc


def grad_scaler(device: torch.device, dtype: torch.dtype) -> "torch.amp.GradScaler | None":
    """Loss scaling for float16 autocast (its gradients underflow without it); None for bf16/fp32."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch; the last step may accumulate fewer micro-batches."""
    return math.ceil(math.ceil(n_examples / batch_size) / grad_accum)


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warmup over ceil(warmup_ratio * total_steps) steps, then cosine decay towards 0."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)


TOKEN_ROWS = "trainable_tokens_delta"  # PEFT's name of the trainable token rows (item ID tokens)


def param_groups(trainable: dict[str, torch.nn.Parameter], spec: dict[str, Any],
                 options: Callable[[str], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups: the spec's lr and weight_decay, scaled or replaced per parameter by
    `options(name)` ({"lr_scale": .., "weight_decay": ..}); parameters with equal options share a group.
    Item ID token rows (PEFT's trainable tokens, the sid prompt) take the spec's `token_lr_scale`
    and no weight decay."""
    lr, decay = float(spec["lr"]), float(spec["weight_decay"])
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in trainable.items():
        opts = options(name) if options is not None else {}
        if TOKEN_ROWS in name:
            opts = {"lr_scale": float(spec["token_lr_scale"]), "weight_decay": 0.0, **opts}
        key = (lr * float(opts.get("lr_scale", 1.0)), float(opts.get("weight_decay", decay)))
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": group_lr, "weight_decay": wd} for (group_lr, wd), ps in groups.items()]


def epoch_order(n_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch, a function of (seed, epoch) alone, so a resumed run needs
    only its position to continue with the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n_examples)


# ----------------------------------------------------------------------------- RNG and checkpoints

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir_for(out: str | Path) -> Path:
    """Where a job writing `out` keeps its checkpoint: beside it, so Snakemake's cleanup of a failed
    job's outputs leaves it in place for the rerun."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def fingerprint(examples: Sequence[Any], spec: dict[str, Any], seed: int, trainable: dict[str, torch.Tensor],
                extra: Any = None) -> str:
    """Hash of everything that decides the run; a checkpoint made by a different run is not resumed."""
    h = hashlib.sha256()
    for part in (spec, seed, extra, sorted((n, tuple(p.shape)) for n, p in trainable.items())):
        h.update(json.dumps(part, sort_keys=True, default=repr).encode())
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def running_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that training changes without being parameters: batch-norm statistics (iLoRA's
    router). A checkpoint keeps them, so a resumed run ends with the same ones."""
    norms = {name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    return {name: b for name, b in model.named_buffers() if name.rsplit(".", 1)[0] in norms}


def save_checkpoint(folder: Path, trainable: dict[str, torch.Tensor], optimizer, scheduler,
                    position: dict[str, int], log_rows: list[dict[str, Any]], run_id: str,
                    buffers: dict[str, torch.Tensor] | None = None,
                    method_state: dict[str, torch.Tensor] | None = None) -> None:
    rng = distributed.gather_objects(_rng_state())  # every rank's, so each resumes its own dropout stream
    with distributed.main_writes() as writer:
        if not writer:
            return
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "fingerprint": run_id, "position": position, "log": log_rows, "rank_rng": rng,
            "trainable": {n: p.detach().clone() for n, p in trainable.items()},
            "buffers": {n: b.detach().clone() for n, b in (buffers or {}).items()},
            "method_state": {n: t.detach().clone() for n, t in (method_state or {}).items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        }
        with atomic_path(folder / CHECKPOINT_FILE, suffix=".pt") as tmp:
            torch.save(state, tmp)


def load_checkpoint(folder: Path, trainable: dict[str, torch.Tensor], optimizer, scheduler,
                    run_id: str, buffers: dict[str, torch.Tensor] | None = None,
                    method_state: dict[str, torch.Tensor] | None = None
                    ) -> tuple[dict[str, int], list[dict[str, Any]]] | None:
    """Restore a checkpoint of this same run in place; None when there is none (or a stale one)."""
    path = folder / CHECKPOINT_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != run_id:
        log.warning("%s was written by a different run (config, data or seed changed); starting afresh", path)
        return None
    if set(state["trainable"]) != set(trainable):
        raise ValueError(f"{path}: trainable parameters differ from the model's")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(state["trainable"][name])
        for name, b in (buffers or {}).items():
            b.copy_(state.get("buffers", {})[name])
        for name, t in (method_state or {}).items():
            if name not in state.get("method_state", {}):
                raise ValueError(f"{path}: no saved '{name}' of the method's state")
            t.copy_(state["method_state"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ranks = state.get("rank_rng") or [state["rng"]]  # "rng": a checkpoint written before data parallel
    if len(ranks) != distributed.world_size():
        log.warning("%s was written by %d ranks, resuming on %d: dropout streams restart from rank 0's",
                    path, len(ranks), distributed.world_size())
    _set_rng_state(ranks[distributed.rank()] if len(ranks) == distributed.world_size() else ranks[0])
    return state["position"], state["log"]


def remove_checkpoint(folder: str | Path) -> None:
    with distributed.main_writes() as writer:
        if writer:
            shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- the loop

def _number(x: Any) -> float:
    return float(x.detach()) if torch.is_tensor(x) else float(x)


def reduce_over_ranks(params: list[torch.nn.Parameter], sums: dict[str, float]) -> dict[str, float]:
    """Add this step's gradients and logged sums over the ranks (no-op on one process). A parameter
    no rank computed a gradient for keeps `grad = None`, as on one process (AdamW then skips it:
    the projector on a text-only LLaRA step)."""
    if distributed.world_size() <= 1:
        return sums
    parts = distributed.gather_objects((sums, [p.grad is not None for p in params]))
    total: dict[str, float] = {}
    for part, _ in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    reduced = [p for i, p in enumerate(params) if any(flags[i] for _, flags in parts)]
    for p in reduced:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    distributed.all_reduce_sum([p.grad for p in reduced])
    return total


def train_step(model: torch.nn.Module, micro_batches: Sequence[Any], loss_fn: LossFn,
               optimizer: torch.optim.Optimizer, scheduler, params: list[torch.nn.Parameter],
               max_grad_norm: float, autocast: Callable[[], contextlib.AbstractContextManager],
               scaler: "torch.amp.GradScaler | None" = None) -> dict[str, float]:
    """One optimizer step over `micro_batches` (this rank's share of the step). Each loss_fn returns
    a mean over its `n_tokens` units; backpropagating loss * n_tokens and dividing the gradients by
    the step's total (over all ranks) makes the step equal to one batch holding all micro-batches
    (accumulation and data parallel change memory and time, not the result)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums = {"weight": 0.0, "loss": 0.0, "tokens": 0.0}
    for batch in micro_batches:
        with autocast():
            loss, n_tokens, diagnostics = loss_fn(model, batch)
        w = _number(n_tokens)
        scaled = loss * w
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        sums["weight"] += w
        sums["loss"] += _number(loss) * w
        diagnostics = dict(diagnostics)
        sums["tokens"] += _number(diagnostics.pop("tokens", w))
        for key, value in diagnostics.items():
            sums[f"diag.{key}"] = sums.get(f"diag.{key}", 0.0) + _number(value) * w
    sums = reduce_over_ranks(params, sums)
    weight = sums["weight"]
    if weight <= 0:
        raise ValueError("a training step had no loss tokens (empty answers?)")
    for p in params:
        if p.grad is not None:
            p.grad.div_(weight)
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    lr = scheduler.get_last_lr()[0]
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the fp16 gradients overflowed; the scale then shrinks
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    row = {"loss": sums["loss"] / weight, "lr": lr, "grad_norm": _number(grad_norm), "n_tokens": weight,
           "tokens": sums["tokens"]}
    row.update({key[len("diag."):]: value / weight for key, value in sums.items() if key.startswith("diag.")})
    return row


def train(model: torch.nn.Module, examples: Sequence[Any], collate: Callable[[list[Any]], Any], loss_fn: LossFn,
          spec: dict[str, Any], *, seed: int, checkpoint_dir: str | Path | None = None,
          autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
          fingerprint_extra: Any = None, desc: str = "train", hooks: Hooks = Hooks(),
          scaler: "torch.amp.GradScaler | None" = None, compile_mode: str = "off",
          compile_cache: str | Path | None = None) -> pd.DataFrame:
    """Train the parameters of `model` that require grad on `examples`; return the per-step log.

    `collate(list of examples) -> batch` builds a micro-batch; `loss_fn(model, batch)` returns
    (mean loss, n_tokens it averages over, diagnostics). `n_tokens` is the micro-batch's weight in
    the step (answer tokens for SFT, instances for a per-instance loss); diagnostics are logged as
    weighted means, and a `tokens` entry, when present, is the count of tokens the forward pass
    processed (prompt included), used for tokens/s. With `checkpoint_dir`, a checkpoint is written
    at the end of every epoch and every `checkpoint_every` optimizer steps, and an existing one of
    the same run is resumed. The caller removes it once the result is saved.

    `hooks`: the method's plug-ins (`Hooks`). `scaler`: a `torch.amp.GradScaler` for float16
    autocast (`grad_scaler`); None otherwise.
    `compile_mode` (`llm.compile`: auto, on, off) and `compile_cache`: the loss's decoder forward
    through torch.compile with a persistent cache (workflow.llm.compiling; `auto` decides from
    the run's estimated work).
    `spec["early_stopping"]` ({metric, patience, min_delta}; needs `hooks.validate`): training stops
    once the metric has not improved for `patience` epochs and the best epoch's weights are put back;
    the learning-rate schedule stays that of `epochs` (stopping early changes no step before it).
    The checkpoint keeps the validation history and the best weights, so a resumed run decides alike.
    The returned log's `attrs["validation"]` holds {history, best_epoch, epochs_trained}.
    Under torchrun every rank calls this with the same examples (module docstring)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (add a LoRA adapter first)")
    if not examples:
        raise ValueError("no training examples")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    buffers = running_statistics(model)
    bs, accum, epochs = int(spec["batch_size"]), int(spec["grad_accum"]), int(spec["epochs"])
    per_epoch = steps_per_epoch(len(examples), bs, accum)
    total = epochs * per_epoch
    optimizer = torch.optim.AdamW(param_groups(trainable, spec, hooks.param_options))
    scheduler = lr_schedule(optimizer, total, float(spec["warmup_ratio"]))
    max_grad_norm = float(spec["max_grad_norm"])
    checkpoint_every = int(spec["checkpoint_every"])
    stopping = EarlyStopping.from_spec(spec, hooks)
    compiled = compiling.decide(compile_mode, model, examples, epochs)
    if compiled:
        compiling.enable(model, compile_cache)

    seed_everything(seed)
    position, log_rows = {"epoch": 0, "step_in_epoch": 0}, []
    run_id = ""
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        run_id = fingerprint(examples, spec, seed, trainable, fingerprint_extra)
        resumed = load_checkpoint(checkpoint_dir, trainable, optimizer, scheduler, run_id, buffers, hooks.state)
        if resumed is not None:
            position, log_rows = resumed
            log.info("resuming from %s at epoch %d, step %d of %d", checkpoint_dir, position["epoch"] + 1,
                     position["step_in_epoch"], per_epoch)
    validation = position.setdefault("validation", {})  # epochs done -> the validate hook's values
    best = position.setdefault("best", {})  # early stopping's best epoch: {epoch, value, weights, buffers}

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        if checkpoint_dir is not None:
            where = {"epoch": epoch, "step_in_epoch": step_in_epoch, "validation": validation, "best": best}
            if step_in_epoch:  # within an epoch: its measured state goes on with it
                where["epoch_state"] = position["epoch_state"]
            save_checkpoint(checkpoint_dir, trainable, optimizer, scheduler, where, log_rows, run_id, buffers,
                            hooks.state)

    global_step = position["epoch"] * per_epoch + position["step_in_epoch"]
    ranks = distributed.world_size()
    if ranks > 1 and accum % ranks:
        log.warning("grad_accum %d is not a multiple of the %d ranks: some ranks idle in every step", accum, ranks)
    bar = tqdm(total=total, initial=global_step, desc=desc, unit="step", dynamic_ncols=True,
               disable=not distributed.is_main() or None)
    run_tokens, run_start = 0.0, time.perf_counter()
    for epoch in range(position["epoch"], epochs):
        if stopping is not None and best and stopping.should_stop(epoch, best["epoch"]):
            log.info("early stopping after epoch %d: %s has not improved on epoch %d's %.4f for %d epochs", epoch,
                     stopping.metric, best["epoch"], best["value"], epoch - best["epoch"])
            break
        order = epoch_order(len(examples), seed, epoch).tolist()
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        start = position["step_in_epoch"] if epoch == position["epoch"] else 0
        if start == 0 or "epoch_state" not in position:
            position["epoch_state"] = dict(hooks.epoch_start(epoch)) if hooks.epoch_start is not None else {}
            if position["epoch_state"]:
                log.info("epoch %d: %s", epoch + 1,
                         ", ".join(f"{k} {v:.4g}" for k, v in position["epoch_state"].items()))
        epoch_state = position["epoch_state"]
        for step_in_epoch in range(start, per_epoch):
            group = batches[step_in_epoch * accum:(step_in_epoch + 1) * accum]
            if hooks.step_start is not None:
                hooks.step_start(global_step, total)
            t0 = time.perf_counter()
            mine = distributed.shard(group)  # this rank's micro-batches of the step
            row = train_step(model, [collate([examples[i] for i in b]) for b in mine], loss_fn, optimizer,
                             scheduler, params, max_grad_norm, autocast, scaler)
            seconds = time.perf_counter() - t0
            global_step += 1
            run_tokens += row["tokens"]
            log_rows.append({"step": global_step, "epoch": epoch + 1, **row, **epoch_state, "seconds": seconds,
                             "tokens_per_s": row["tokens"] / seconds})
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                            tok_s=f"{run_tokens / (time.perf_counter() - run_start):.0f}")
            if checkpoint_every and global_step % checkpoint_every == 0 and step_in_epoch + 1 < per_epoch:
                checkpoint(epoch, step_in_epoch + 1)
        if hooks.validate is not None:
            validation[epoch + 1] = validate_epoch(hooks.validate, epoch + 1, log_rows, stopping, best, trainable,
                                                   buffers)
        checkpoint(epoch + 1, 0)
        done = [r for r in log_rows if r["epoch"] == epoch + 1]
        log.info("epoch %d/%d: mean loss %.4f over %d steps, %.0f tokens/s", epoch + 1, epochs,
                 sum(r["loss"] for r in done) / len(done), len(done),
                 sum(r["tokens"] for r in done) / sum(r["seconds"] for r in done))
    bar.close()
    if compiled:
        compiling.log_graph_breaks(desc)
    frame = pd.DataFrame(log_rows)
    if validation:
        epochs_trained = int(frame["epoch"].max())
        kept = best["epoch"] if stopping is not None and stopping.keep == "best" else epochs_trained
        if kept < epochs_trained:
            restore_weights(best, trainable, buffers)
            log.info("kept epoch %d's weights (%s %.4f) of %d epochs trained", kept, stopping.metric, best["value"],
                     epochs_trained)
        frame.attrs["validation"] = {"history": {str(e): v for e, v in sorted(validation.items())},
                                     "best_epoch": best.get("epoch"), "epochs_trained": epochs_trained,
                                     "kept_epoch": kept}
    return frame


def validate_epoch(validate: Callable[[int], dict[str, float]], epochs_done: int, log_rows: list[dict[str, Any]],
                   stopping: EarlyStopping | None, best: dict[str, Any], trainable: dict[str, torch.Tensor],
                   buffers: dict[str, torch.Tensor]) -> dict[str, float]:
    """Run the validate hook after `epochs_done` epochs: its values go on the epoch's log rows
    (`valid_<name>`); with early stopping, a better value makes this epoch the best (its weights
    copied into `best`)."""
    values = {name: float(v) for name, v in validate(epochs_done).items()}
    for row in log_rows:
        if row["epoch"] == epochs_done:
            row.update({f"valid_{name}": v for name, v in values.items()})
    log.info("validation after epoch %d: %s", epochs_done, ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    if stopping is not None:
        if stopping.metric not in values:
            raise ValueError(f"early_stopping.metric {stopping.metric!r}: the validation reports {sorted(values)}")
        if stopping.improves(values[stopping.metric], best.get("value")):
            best.update(epoch=epochs_done, value=values[stopping.metric])
            if stopping.keep == "best":
                best.update(weights={n: p.detach().clone() for n, p in trainable.items()},
                            buffers={n: b.detach().clone() for n, b in buffers.items()})
    return values


def restore_weights(best: dict[str, Any], trainable: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(best["weights"][name])
        for name, b in buffers.items():
            b.copy_(best["buffers"][name])


def save_adapter(model: torch.nn.Module, out: str | Path, config: dict[str, Any], train_log: pd.DataFrame,
                 seed: int, save_weights: Callable[[Path], None] | None = None) -> Path:
    """Write the PEFT adapter (safetensors + adapter_config.json; or what `save_weights(folder)`
    writes), the config slice that made it (training_config.json) and the per-step log
    (train_log.parquet), all at once. Under torchrun rank 0 writes, the others wait for it."""
    with distributed.main_writes() as writer:
        if writer:
            with atomic_dir(out) as tmp:
                if save_weights is None:
                    # never the resized embedding matrix (the vocabulary x hidden size): added item
                    # tokens' rows are the adapter's trainable tokens, the rest the base model's
                    model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
                else:
                    save_weights(tmp)
                write_json({"config": config, "seed": seed}, tmp / "training_config.json")
                write_parquet(train_log, tmp / "train_log.parquet", config=config, seed=seed)
    return Path(out)
