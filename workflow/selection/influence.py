"""DEALRec's influence score on the SASRec surrogate (DESIGN.md section 5).

    v     = mean over the train samples of grad L(s)              (L: `loss`, below)
    h     = H^-1 v by LiSSA: h_0 = v, h_t = v + (1 - damping) h_{t-1} - H_t h_{t-1} / scale,
            H_t the Hessian of the loss of `hvp_batch` random train samples (authors: 1; all of them
            every step when hvp_batch >= their number), `depth` steps;
            the estimate is h_depth / scale = (H + damping * scale * I)^-1 v at convergence
    I(s)  = <h, grad L(s)>                                         for every train sample s

Loss (`selection.dealrec.influence.loss`):
- `ce` (default): the surrogate's own training loss on the sample's one window, cross-entropy of its
  target over every item row given the history (RecBole's CE, what our SASRec is trained with).
- `bce`: the authors' (their SASRec's training loss): the sample as one user sequence, history then
  target; at every position t of the (last max_len items of the) history, the next item is the
  positive and one drawn item the negative,
      L(s) = 1/n sum_t [ -log sigmoid(<o_t, e_pos_t>) - log(1 - sigmoid(<o_t, e_neg_t>)) ],
  o_t the SASRec output at position t, n the positions. Negatives: uniform over the items outside the
  sample's sequence, one per position, drawn once from numpy's RNG seeded by (seed, sample id), so a
  sample's negatives do not depend on the other samples or the batching. A batch's loss is the mean
  of its samples' losses (the authors pool positions over a batch; with their one sample per
  Hessian-vector product the two agree; v then weighs each sample once rather than by its length).
  The surrogate is still trained with CE: only the influence's loss changes.

Gradients are taken w.r.t. a parameter subset of the trained SASRec (config
`selection.dealrec.influence.params`, fnmatch patterns over its parameter names, `{last}` = the last
Transformer layer's index; default the last layer's attention output projection, 64 x 64, as the
authors). The model is in eval mode (no dropout), so the loss is a deterministic function of the
parameters. Per-sample gradients: `torch.func.vmap(grad(...))` over chunks of `grad_batch`
samples; Hessian-vector products: forward-over-reverse `torch.func.jvp(grad(...))`. The LiSSA log
holds ||h_t - h_{t-1}|| (the convergence of the recursion) every depth / 20 steps; the trace is also
stored in the output's metadata. Dividing by `scale` does not change the ranking (S min-max
normalises I), but it makes the estimate comparable with an exact solve (the tests).

Written by hand (about 30 lines) after checking the maintained libraries against the project's
pins (torch 2.13, numpy 2.4, Python 3.11): pyDVL 0.10 (LissaInfluence) requires numpy < 2 and pulls in
cvxpy, dask and distributed; kronfluence 1.0 computes EK-FAC influence, not LiSSA, and requires
torchvision; captum 0.9's influence module offers TracIn, an exact-Hessian and an Arnoldi influence
but no LiSSA; dattri 0.3's `ihvp_lissa` runs the same recursion but requires pretty_midi, draws its
samples from torch's global RNG and returns only the final estimate, so the convergence of the
recursion (what this stage logs) cannot be observed.

    python -m workflow.selection.influence --surrogate results/ml-100k/surrogate \
        --samples .../samples.parquet --spec '{...selection block...}' --seed 42 --out .../influence.parquet

Output: sample_id, influence (float64) for every train sample, sorted by sample_id.
"""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.func import functional_call, grad, jvp, vmap
from tqdm.auto import tqdm

from workflow import cli
from workflow.io import write_parquet

log = logging.getLogger(__name__)

SCHEMA = pa.schema([("sample_id", pa.string()), ("influence", pa.float64())])
Params = dict[str, torch.Tensor]
LOSSES = ("ce", "bce")
# (params, *data tensors of a batch) -> the mean loss over the batch. The data of a sample: ce
# (seq [L], length, target); bce (seq [L], length, positives [L], negatives [L], 0 = no position)
BatchLoss = Callable[..., torch.Tensor]


# ----------------------------------------------------------------------------- parameters and loss

def parameter_subset(model: torch.nn.Module, patterns: list[str]) -> Params:
    """The parameters whose names match any pattern (`{last}` = the last Transformer layer), detached."""
    named = dict(model.named_parameters())
    layers = sorted({int(n.split(".")[2]) for n in named if n.startswith("trm_encoder.layer.")})
    last = layers[-1] if layers else 0
    wanted = [p.replace("{last}", str(last)) for p in patterns]
    chosen = {n: p.detach() for n, p in named.items() if any(fnmatch.fnmatchcase(n, w) for w in wanted)}
    if not chosen:
        raise ValueError(f"config key 'selection.dealrec.influence.params': {patterns} match none of the "
                         f"surrogate's parameters ({', '.join(named)})")
    return chosen


def sasrec_batch_loss(model: torch.nn.Module, kind: str = "ce") -> BatchLoss:
    """The influence's loss (module docstring) as a function of a parameter subset; the other
    parameters and buffers stay the model's. `ce`: SASRec's CE over every embedding row, as
    `surrogate.cross_entropy_loss`; `bce`: the authors' per-position BCE with drawn negatives."""
    if kind not in LOSSES:
        raise ValueError(f"config key 'selection.dealrec.influence.loss': {kind!r} is not one of {LOSSES}")
    fixed = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    fixed = {k: v.detach() for k, v in fixed.items()}

    def ce(params: Params, seq, lengths, targets) -> torch.Tensor:
        state = {**fixed, **params}
        out = functional_call(model, state, (seq, lengths))
        logits = out @ state["item_embedding.weight"].T
        return torch.nn.functional.cross_entropy(logits, targets)

    def bce(params: Params, seq, lengths, positives, negatives) -> torch.Tensor:
        state = {**fixed, **params}
        with every_position(model):
            out = functional_call(model, state, (seq, lengths))  # [B, L, H]
        table = state["item_embedding.weight"]
        pos = (out * table[positives]).sum(-1)
        neg = (out * table[negatives]).sum(-1)
        valid = (positives > 0).to(out.dtype)
        # -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x)
        per_position = (torch.nn.functional.softplus(-pos) + torch.nn.functional.softplus(neg)) * valid
        return (per_position.sum(1) / valid.sum(1)).mean()

    return ce if kind == "ce" else bce


@contextlib.contextmanager
def every_position(model: torch.nn.Module):
    """RecBole's SASRec.forward returns the output at each sequence's last position (gather_indexes);
    inside this block it returns every position's output [B, L, H] (the forward is causal, so
    position t sees the items up to t only, as in the authors' per-position loss)."""
    model.gather_indexes = lambda output, index: output
    try:
        yield
    finally:
        del model.gather_indexes


def draw_negatives(sample_ids, sequences: list[list[int]], positions: torch.Tensor, n_items: int,
                   seed: int) -> torch.Tensor:
    """[N, L] internal ids: one item per position where `positions` > 0, uniform over 1..n_items-1
    minus the sample's own sequence (history and target), from numpy's RNG seeded by (seed, the
    sample id's crc32); 0 elsewhere."""
    out = torch.zeros_like(positions)
    for row, (sample_id, items) in enumerate(zip(sample_ids, sequences)):
        rng = np.random.default_rng([seed, zlib.crc32(str(sample_id).encode()), 0xBCE])
        excluded = set(items)
        if len(excluded) >= n_items - 1:
            raise ValueError(f"sample {sample_id}: no item outside its sequence to draw a negative from")
        for col in torch.nonzero(positions[row] > 0).flatten().tolist():
            item = int(rng.integers(1, n_items))
            while item in excluded:
                item = int(rng.integers(1, n_items))
            out[row, col] = item
    return out


def per_sample_grads(loss: BatchLoss, params: Params, *data) -> Params:
    """Each sample's gradient [B, *shape] per parameter: vmap over samples of grad of its own loss."""
    def one(p, *sample):
        return loss(p, *(t[None] for t in sample))

    return vmap(grad(one), in_dims=(None, *(0 for _ in data)))(params, *data)


def flat(tensors: Params) -> torch.Tensor:
    """One vector of the tensors, in parameter order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def flat_rows(tensors: Params) -> torch.Tensor:
    """[B, P]: per-sample gradients flattened in parameter order."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors.values()], dim=1)


def unflat(vector: torch.Tensor, like: Params) -> Params:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = vector[start : start + t.numel()].view_as(t)
        start += t.numel()
    return out


# ----------------------------------------------------------------------------- v, LiSSA, scores

def mean_gradient(loss: BatchLoss, params: Params, data, chunk: int) -> torch.Tensor:
    """v: the gradient of the mean loss over all samples (chunked; chunk means weighted by size)."""
    n = len(data[0])
    total = torch.zeros(sum(p.numel() for p in params.values()), dtype=torch.float64)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        g = grad(loss)(params, *(t[part] for t in data))
        total += flat(g).double() * len(data[0][part])
    return (total / n).float()


def hvp(loss: BatchLoss, params: Params, batch, vector: torch.Tensor) -> torch.Tensor:
    """H @ vector for the mean loss of `batch` (forward-over-reverse)."""
    tangent = unflat(vector, params)
    _, out = jvp(lambda p: grad(loss)(p, *batch), (params,), (tangent,))
    return flat(out)


def lissa(loss: BatchLoss, params: Params, data, v: torch.Tensor, *, damping: float, scale: float, depth: int,
          hvp_batch: int, seed: int, log_every: int | None = None) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """(H + damping * scale * I)^-1 v by the LiSSA recursion of the module docstring, and its
    convergence trace [{step, diff_norm, estimate_norm}] (diff_norm = ||h_t - h_{t-1}|| / scale)."""
    n = len(data[0])
    rng = np.random.default_rng([seed, 0x1155A])
    full_batch = hvp_batch >= n  # the full-batch Hessian every step: deterministic (the tests)
    draws = None if full_batch else torch.from_numpy(rng.integers(0, n, size=(depth, hvp_batch)))
    log_every = log_every or max(1, depth // 20)
    h, trace = v.clone(), []
    for step in tqdm(range(1, depth + 1), desc="lissa", unit="step", mininterval=5):
        index = torch.arange(n) if full_batch else draws[step - 1]
        new = v + (1 - damping) * h - hvp(loss, params, tuple(t[index] for t in data), h) / scale
        if not torch.isfinite(new).all():
            raise ValueError(f"LiSSA diverged at step {step} (raise config key 'selection.dealrec.influence.scale')")
        if step % log_every == 0 or step == depth:
            diff, norm = float((new - h).norm()) / scale, float(new.norm()) / scale
            trace.append({"step": step, "diff_norm": diff, "estimate_norm": norm})
            log.info("LiSSA step %d/%d: ||h_t - h_t-1|| = %.3e, ||h_t|| = %.3e (relative %.2e)",
                     step, depth, diff, norm, diff / max(norm, 1e-30))
        h = new
    return h / scale, trace


def influence_scores(loss: BatchLoss, params: Params, data, h: torch.Tensor, chunk: int) -> np.ndarray:
    """I(s) = <h, grad L(s)> for every sample, per-sample gradients in chunks of `chunk`."""
    n = len(data[0])
    out = np.zeros(n, dtype=np.float64)
    with tqdm(total=n, desc="influence", unit="sample", mininterval=5) as bar:
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            g = flat_rows(per_sample_grads(loss, params, *(t[part] for t in data)))
            out[part] = (g.double() @ h.double()).numpy()
            bar.update(len(g))
    return out


# ----------------------------------------------------------------------------- stage

def encode_train(surrogate, samples: pd.DataFrame, loss: str = "ce", seed: int = 0):
    """(sample ids, data) of the train samples, sorted by sample_id: ce (seq, lengths, targets);
    bce (seq, lengths, positives, negatives), the positive at position t being the item after it
    (the next history item, the target after the last)."""
    from workflow.surrogate import encode_histories

    if loss not in LOSSES:
        raise ValueError(f"config key 'selection.dealrec.influence.loss': {loss!r} is not one of {LOSSES}")
    train = samples[samples["split"] == "train"].assign(sample_id=lambda d: d["sample_id"].astype(str))
    train = train.sort_values("sample_id", kind="stable")
    if train.empty:
        raise ValueError("no train samples to score")
    index = surrogate.index_of_item
    max_len = surrogate.model.max_seq_length
    seq, lengths = encode_histories(list(train["history"]), index, max_len)
    unknown = [t for t in train["target"].astype(str) if t not in index]
    if unknown:
        raise KeyError(f"target item {unknown[0]!r} is not in the surrogate's vocabulary")
    targets = torch.tensor([index[str(t)] for t in train["target"]], dtype=torch.long)
    ids = train["sample_id"].to_numpy(dtype=object)
    if loss == "ce":
        return ids, (seq, lengths, targets)
    positives = torch.zeros_like(seq)
    sequences = []
    for row, (history, n) in enumerate(zip(train["history"], lengths.tolist())):
        following = [index[str(i)] for i in list(history)[-n:][1:]] + [int(targets[row])]
        positives[row, :n] = torch.tensor(following)
        sequences.append([index[str(i)] for i in history] + [int(targets[row])])
    negatives = draw_negatives(ids, sequences, positives, surrogate.model.n_items, seed)
    return ids, (seq, lengths, positives, negatives)


def compute_influence(surrogate, samples: pd.DataFrame, settings: dict[str, Any], seed: int):
    """(table sample_id/influence, LiSSA trace, timings) for every train sample."""
    model = surrogate.model.eval()
    ids, data = encode_train(surrogate, samples, settings["loss"], seed)
    params = parameter_subset(model, settings["params"])
    loss = sasrec_batch_loss(model, settings["loss"])
    log.info("influence on %s (%d parameters), %d train samples, %s loss", ", ".join(params),
             sum(p.numel() for p in params.values()), len(ids), settings["loss"])
    timings, started = {}, time.perf_counter()
    v = mean_gradient(loss, params, data, settings["grad_batch"])
    timings["v_seconds"] = round(time.perf_counter() - started, 3)
    log.info("v: ||v|| = %.4e (%.1fs)", float(v.norm()), timings["v_seconds"])
    started = time.perf_counter()
    h, trace = lissa(loss, params, data, v, damping=settings["damping"], scale=settings["scale"],
                     depth=settings["depth"], hvp_batch=settings["hvp_batch"], seed=seed)
    timings["lissa_seconds"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    scores = influence_scores(loss, params, data, h, settings["grad_batch"])
    timings["scores_seconds"] = round(time.perf_counter() - started, 3)
    log.info("LiSSA %.1fs, scores %.1fs; influence quantiles %s", timings["lissa_seconds"], timings["scores_seconds"],
             np.round(np.quantile(scores, [0, 0.25, 0.5, 0.75, 1]), 6).tolist())
    return pd.DataFrame({"sample_id": ids.astype(str), "influence": scores}), trace, timings


def influence_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The `selection` block from --spec, validated with its defaults; returns its influence part."""
    from workflow.config import validate_block

    return validate_block("selection", spec)["dealrec"]["influence"]


def run_influence(surrogate_dir, samples_path, spec: dict[str, Any], seed: int, out) -> pd.DataFrame:
    from workflow.surrogate import load_surrogate

    settings = influence_settings(spec)
    torch.manual_seed(seed)
    surrogate = load_surrogate(surrogate_dir)
    samples = pd.read_parquet(samples_path, columns=["sample_id", "split", "history", "target"])
    table, trace, timings = compute_influence(surrogate, samples, settings, seed)
    write_parquet(table, out, schema=SCHEMA, seed=seed, config={"influence": settings},
                  surrogate=str(Path(surrogate_dir)), lissa_trace=trace, **timings)
    return table


def main(argv=None) -> int:
    p = cli.parser("DEALRec influence scores of the train samples on the SASRec surrogate (LiSSA).")
    p.add_argument("--surrogate", required=True, help="the surrogate folder (model.pt, model.json)")
    p.add_argument("--samples", required=True)
    p.add_argument("--spec", type=cli.json_arg, required=True, help="JSON: the config's `selection` block")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    return cli.run(lambda a: run_influence(a.surrogate, a.samples, a.spec, a.seed, a.out), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
