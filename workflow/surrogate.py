"""SASRec surrogate trained with RecBole: the traditional baseline, the item and sequence
embeddings iLoRA uses, and the model DEALRec computes influence on.

Training sees the train split only. RecBole's sequential datasets build their own augmented
(prefix -> next item) sequences from an interaction file, so instead we hand it pre-split
"benchmark" files whose rows are exactly our samples (history -> target): the train file holds
the train samples, the valid file the valid samples (for early stopping). RecBole insists on a
third, test file; it repeats the valid samples, so test targets never enter RecBole at all.
An `.item` file lists every item that appears anywhere in the samples (histories, targets,
candidates), so every candidate has an embedding and a score.

Exports (folder `results/{dataset}/surrogate/`):
- model.pt: the state_dict (loads with torch.load(..., weights_only=True));
- model.json: hyper-parameters, `item_ids` (item_ids[k] has RecBole internal id k + 1; id 0 is
  padding) and training figures;
- item_embeddings.parquet: item_id, embedding (list<float32>), padding row excluded;
- sequence_repr.parquet: sample_id, repr (list<float32>): the last Transformer layer's output at
  the last history position (what SASRec scores items with; no projection follows), every split;
- metrics.parquet: per-sample metrics (workflow.metrics format), method `sasrec`, selection
  `all`, protocols `likelihood` (the samples' candidate sets) and `full_ranking` (all items,
  history items excluded), splits valid and test.

Early stopping uses RecBole's own full-sort NDCG@10 on the valid samples, which (for sequential
models) does not exclude history items; the exported full-ranking metrics do exclude them.
`load_surrogate` rebuilds the model for later stages (iLoRA, DEALRec), and `cross_entropy_loss`
gives its training objective on any (history, target) pairs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from workflow import cli, io, metrics, prepare, recbole_compat
from workflow.baseline_table import BASELINES, SURROGATE
from workflow.config import validate_block
from workflow.llm.model import resolve_device
from workflow.prepare import item_vocabulary

log = logging.getLogger("workflow.surrogate")

ATOMIC_NAME = "surrogate"  # RecBole dataset name: files are {name}.{split}.inter and {name}.item
VALID_METRIC = "ndcg@10"  # RecBole's full-sort validation metric for early stopping
# RecBole SASRec settings we fix (the rest come from the config's `surrogate` block)
FIXED_MODEL = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE"}
FIELDS = {
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "LIST_SUFFIX": "_list",
    "ITEM_LIST_LENGTH_FIELD": "item_length",
    "NEG_PREFIX": "neg_",
}
INFERENCE_BATCH = 2048


@dataclass
class Surrogate:
    """A trained SASRec and its item ids: item_ids[k] is RecBole internal id k + 1."""

    model: torch.nn.Module
    item_ids: list[str]
    hyper_parameters: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def index_of_item(self) -> dict[str, int]:
        return {item: k + 1 for k, item in enumerate(self.item_ids)}


# ----------------------------------------------------------------------------- settings, input


def resolve_settings(spec: dict[str, Any] | None) -> dict[str, Any]:
    """The `surrogate` block checked against config/schema.yaml, its defaults filled in."""
    return validate_block("surrogate", spec or {})


def check_samples(samples: pd.DataFrame, source: str = "samples") -> None:
    """Every samples reader's checks (workflow/prepare.py), then what training with RecBole needs."""
    prepare.check_samples(samples, source)
    for split in ("train", "valid"):
        if not (samples["split"] == split).any():
            raise ValueError(f"{source}: no {split} samples (the surrogate trains on train, stops early on valid)")
    n_candidates = samples["candidates"].map(len)
    if n_candidates.nunique() > 1:
        row = samples[n_candidates != n_candidates.iloc[0]].iloc[0]
        raise ValueError(f"{source}: candidate lists differ in length (sample '{row.sample_id}' has "
                         f"{len(row.candidates)}, sample '{samples.iloc[0].sample_id}' {n_candidates.iloc[0]})")
    if samples["sample_id"].duplicated().any():
        raise ValueError(f"{source}: duplicate sample_id '{samples[samples.sample_id.duplicated()].iloc[0].sample_id}'")


# ----------------------------------------------------------------------------- RecBole files


def write_atomic_files(samples: pd.DataFrame, vocabulary: Sequence[str], folder: Path) -> None:
    """RecBole benchmark files: {name}.train.inter (train samples only), {name}.valid.inter and
    {name}.test.inter (both the valid samples) and {name}.item (the vocabulary). Item and user
    tokens are our own integer codes, so ids holding tabs or spaces cannot break the format."""
    folder.mkdir(parents=True, exist_ok=True)
    code = {item: str(k + 1) for k, item in enumerate(vocabulary)}
    user_code = {user: str(k + 1) for k, user in enumerate(pd.unique(samples["user_id"].astype(str)))}
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    for file_split, sample_split in (("train", "train"), ("valid", "valid"), ("test", "valid")):
        part = samples[samples["split"] == sample_split]
        path = folder / f"{ATOMIC_NAME}.{file_split}.inter"
        with path.open("w", encoding="utf-8") as out:
            out.write(header)
            for user, history, target in zip(part["user_id"].astype(str), part["history"], part["target"]):
                out.write(f"{user_code[user]}\t{' '.join(code[str(i)] for i in history)}\t{code[str(target)]}\n")
        recbole_compat.check_no_missing(path)
    item_path = folder / f"{ATOMIC_NAME}.item"
    item_path.write_text("item_id:token\n" + "".join(f"{c}\n" for c in code.values()), encoding="utf-8")
    recbole_compat.check_no_missing(item_path)


def sasrec_architecture(settings: dict[str, Any]) -> dict[str, Any]:
    """The config's `surrogate` keys under RecBole's SASRec names (training and export share it)."""
    return {
        "hidden_size": settings["hidden_size"],
        "n_layers": settings["n_layers"],
        "n_heads": settings["n_heads"],
        "inner_size": settings["inner_size"],
        "hidden_dropout_prob": settings["dropout"],
        "attn_dropout_prob": settings["dropout"],
    }


def recbole_config_dict(settings: dict[str, Any], max_len: int, data_path: Path, checkpoint_dir: Path,
                        seed: int) -> dict:
    return {
        **FIELDS,
        **FIXED_MODEL,
        "data_path": str(data_path),
        "checkpoint_dir": str(checkpoint_dir),
        "benchmark_filename": ["train", "valid", "test"],
        "alias_of_item_id": ["item_id_list"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]},
        "MAX_ITEM_LIST_LENGTH": max_len,
        "train_neg_sample_args": None,  # CE over all items: no negative sampling
        "eval_args": {"split": {"RS": [1, 0, 0]}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit"],
        "topk": [10],
        "valid_metric": VALID_METRIC.upper(),
        **sasrec_architecture(settings),
        "learning_rate": settings["lr"],
        "epochs": settings["epochs"],
        "stopping_step": settings["patience"],
        "eval_step": settings["eval_every"],
        "train_batch_size": settings["batch_size"],
        "eval_batch_size": 4096,
        "worker": 0,  # batches are index slices of in-memory tensors: workers only add overhead
        "seed": seed,
        "reproducibility": True,
        "show_progress": False,
        "log_wandb": False,
        "save_dataset": False,
        "save_dataloaders": False,
    }


# ----------------------------------------------------------------------------- training


def train_surrogate(
    samples: pd.DataFrame,
    items: pd.DataFrame | None,
    settings: dict[str, Any] | None = None,
    *,
    seed: int,
    workdir: str | os.PathLike | None = None,
) -> Surrogate:
    """Train SASRec on the train samples, early-stopping on the valid samples; returns the best
    model (by valid NDCG@10 over all items). RecBole's files and checkpoints live in `workdir`
    (a temporary folder when None)."""
    settings = resolve_settings(settings)
    check_samples(samples)
    vocabulary = item_vocabulary(samples, items)
    max_len = int(samples["history"].map(len).max())
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="surrogate-") as tmp:
            return _train_in(Path(tmp), samples, vocabulary, max_len, settings, seed)
    return _train_in(Path(workdir), samples, vocabulary, max_len, settings, seed)


def _train_in(workdir: Path, samples, vocabulary, max_len, settings, seed) -> Surrogate:
    recbole_compat.apply()
    from recbole.data import data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    started = time.perf_counter()
    write_atomic_files(samples, vocabulary, workdir / ATOMIC_NAME)
    device = resolve_device(settings["device"], "surrogate.device").type  # RecBole takes "cpu" or "cuda"
    config = recbole_compat.make_config(
        SASRec, ATOMIC_NAME, recbole_config_dict(settings, max_len, workdir, workdir / "checkpoints", seed), device
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = recbole_compat.create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])  # model init independent of data loading
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    prepare_seconds = time.perf_counter() - started

    fit_started = time.perf_counter()
    progress = {"last": fit_started, "best_epoch": -1}

    def report(epoch: int, valid_score: float) -> None:
        now = time.perf_counter()
        if trainer.cur_step == 0:  # RecBole just saved this epoch as the best
            progress["best_epoch"] = epoch
        log.info("epoch %d: train loss %.4f, valid %s %.4f (%.1fs)", epoch,
                 trainer.train_loss_dict[epoch], VALID_METRIC, valid_score, now - progress["last"])
        progress["last"] = now

    best_score, _ = trainer.fit(train_data, valid_data, verbose=False, saved=True, callback_fn=report)
    trainer.evaluate(valid_data, load_best_model=True)  # restores the best epoch's weights
    fit_seconds = time.perf_counter() - fit_started
    epochs_run = len(trainer.train_loss_dict)
    best_epoch = progress["best_epoch"]
    log.info("data %.1fs; trained %d epochs in %.1fs (%.2fs/epoch); best epoch %d, valid %s %.4f",
             prepare_seconds, epochs_run, fit_seconds, fit_seconds / max(epochs_run, 1), best_epoch,
             VALID_METRIC, best_score)

    tokens = dataset.field2id_token["item_id"]  # internal id -> our code (k + 1 in `vocabulary`)
    if tokens[0] != "[PAD]" or len(tokens) != len(vocabulary) + 1:
        raise RuntimeError(f"RecBole item vocabulary has {len(tokens) - 1} items, expected {len(vocabulary)}")
    item_ids = [vocabulary[int(token) - 1] for token in tokens[1:]]
    hyper_parameters = {
        "model": "SASRec",
        "n_items": len(tokens),  # including the padding id 0
        "max_seq_length": max_len,
        **sasrec_architecture(settings),
        **FIXED_MODEL,
    }
    training = {
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        f"best_valid_{VALID_METRIC}": float(best_score),
        "prepare_seconds": round(prepare_seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "seconds_per_epoch": round(fit_seconds / max(epochs_run, 1), 3),
        "train_samples": int((samples["split"] == "train").sum()),
        "valid_samples": int((samples["split"] == "valid").sum()),
        "settings": settings,
        "seed": seed,
        "device": device,
    }
    model.eval()
    return Surrogate(model=model.cpu(), item_ids=item_ids, hyper_parameters=hyper_parameters, training=training)


# ----------------------------------------------------------------------------- save and load


def save_surrogate(surrogate: Surrogate, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    with io.atomic_path(folder / "model.pt", suffix=".pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in surrogate.model.state_dict().items()}, tmp)
    meta = {"hyper_parameters": surrogate.hyper_parameters, "item_ids": surrogate.item_ids,
            "padding_index": 0, "training": surrogate.training}
    io.write_json(meta, folder / "model.json")


def build_sasrec(hyper_parameters: dict[str, Any]) -> torch.nn.Module:
    """An untrained RecBole SASRec from exported hyper-parameters, without a RecBole dataset."""
    recbole_compat.apply()
    from recbole.model.sequential_recommender import SASRec

    config = {**FIELDS, **hyper_parameters, "MAX_ITEM_LIST_LENGTH": hyper_parameters["max_seq_length"], "device": "cpu"}
    n_items = hyper_parameters["n_items"]
    return SASRec(config, types.SimpleNamespace(num=lambda field_name: n_items))


def load_surrogate(folder: str | os.PathLike) -> Surrogate:
    """Load model.pt + model.json from `folder`; errors name the file that is missing or bad."""
    folder = Path(folder)
    meta_path, weights_path = folder / "model.json", folder / "model.pt"
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: surrogate file missing (run the surrogate stage)")
    try:
        meta = json.loads(meta_path.read_text())
        hyper_parameters, item_ids = meta["hyper_parameters"], meta["item_ids"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path}: not a surrogate description ({exc})") from exc
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise ValueError(f"{weights_path}: cannot load the surrogate checkpoint ({type(exc).__name__}: {exc})") from exc
    model = build_sasrec(hyper_parameters)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{weights_path}: weights do not match {meta_path} ({exc})") from exc
    if len(item_ids) + 1 != hyper_parameters["n_items"]:
        raise ValueError(f"{meta_path}: {len(item_ids)} item ids for {hyper_parameters['n_items']} embedding rows")
    model.eval()
    return Surrogate(model=model, item_ids=list(item_ids), hyper_parameters=hyper_parameters,
                     training=meta.get("training", {}))


# ----------------------------------------------------------------------------- inference


def encode_histories(histories: Sequence[Sequence[str]], index_of_item: dict[str, int], max_len: int):
    """Right-padded internal-id sequences (RecBole's layout) and their lengths; histories
    longer than `max_len` keep their most recent items."""
    seq = torch.zeros((len(histories), max_len), dtype=torch.long)
    lengths = torch.zeros(len(histories), dtype=torch.long)
    for row, history in enumerate(histories):
        recent = list(history)[-max_len:]
        if not recent:
            raise ValueError(f"history {row} is empty")
        try:
            seq[row, : len(recent)] = torch.tensor([index_of_item[str(i)] for i in recent])
        except KeyError as exc:
            raise KeyError(f"history {row}: item {exc} is not in the surrogate's vocabulary") from exc
        lengths[row] = len(recent)
    return seq, lengths


@torch.no_grad()
def sequence_representations(surrogate: Surrogate, histories: Sequence[Sequence[str]]) -> np.ndarray:
    """[n, hidden] SASRec output at each history's last position (eval mode: no dropout)."""
    model = surrogate.model.eval()
    seq, lengths = encode_histories(histories, surrogate.index_of_item, model.max_seq_length)
    device = next(model.parameters()).device
    out = [model(seq[i : i + INFERENCE_BATCH].to(device), lengths[i : i + INFERENCE_BATCH].to(device)).cpu()
           for i in range(0, len(seq), INFERENCE_BATCH)]
    hidden = model.hidden_size
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, hidden), dtype=np.float32)


def cross_entropy_loss(surrogate: Surrogate, histories: Sequence[Sequence[str]], targets: Sequence[str],
                       reduction: str = "none") -> torch.Tensor:
    """SASRec's training loss (RecBole `calculate_loss` with CE: logits over every embedding row,
    padding included) for (history, target) pairs, differentiable; per sample by default. For
    influence computations (DEALRec) on the objective the surrogate was trained with."""
    model = surrogate.model
    index = surrogate.index_of_item
    seq, lengths = encode_histories(histories, index, model.max_seq_length)
    device = next(model.parameters()).device
    target = torch.tensor([index[str(t)] for t in targets], dtype=torch.long, device=device)
    logits = model(seq.to(device), lengths.to(device)) @ model.item_embedding.weight.T
    return torch.nn.functional.cross_entropy(logits, target, reduction=reduction)


def item_embeddings(surrogate: Surrogate) -> np.ndarray:
    """[n_items, hidden] embedding rows in `surrogate.item_ids` order (padding row 0 dropped)."""
    return surrogate.model.item_embedding.weight.detach().cpu().numpy()[1:].astype(np.float32)


def score_all_items(surrogate: Surrogate, representations: np.ndarray) -> np.ndarray:
    """[n, n_items] scores, columns in `surrogate.item_ids` order."""
    return representations @ item_embeddings(surrogate).T


# ----------------------------------------------------------------------------- evaluation


def evaluate_surrogate(
    surrogate: Surrogate, samples: pd.DataFrame, dataset: str, representations: np.ndarray | None = None,
    splits: Sequence[str] = ("valid", "test"),
) -> pd.DataFrame:
    """Per-sample metrics (workflow.metrics format) on the samples' candidate sets and in full
    ranking over all items with each sample's history excluded."""
    keep = samples["split"].isin(splits).to_numpy()
    part = samples[keep].reset_index(drop=True)
    reprs = (sequence_representations(surrogate, part["history"].tolist()) if representations is None
             else representations[keep])
    column_of = {item: k for k, item in enumerate(surrogate.item_ids)}
    targets = np.array([column_of[str(t)] for t in part["target"]], dtype=np.int64)
    candidate_cols = np.array([[column_of[str(c)] for c in cands] for cands in part["candidates"]], dtype=np.int64)
    target_in_candidates = metrics.target_columns(part["candidates"], part["target"].astype(str), part["sample_id"])
    history_cols = [[column_of[str(i)] for i in history] for history in part["history"]]

    candidate_scores, full_ranks = [], []
    for rows in metrics.score_blocks(len(part), len(surrogate.item_ids)):
        scores = score_all_items(surrogate, reprs[rows])
        candidate_scores.append(np.take_along_axis(scores, candidate_cols[rows], axis=1))
        full_ranks.append(metrics.full_ranking_ranks(scores, targets[rows], exclude=history_cols[rows]))
    candidate_scores = np.concatenate(candidate_scores) if candidate_scores else np.zeros((0, 1))
    full_ranks = np.concatenate(full_ranks) if full_ranks else np.zeros(0, dtype=np.int64)

    labels = dict(dataset=dataset, method=SURROGATE, selection=BASELINES[SURROGATE])
    frames = [
        metrics.ranking_metrics_frame(part, metrics.candidate_metrics(candidate_scores, target_in_candidates),
                                      protocol="likelihood", **labels),
        metrics.ranking_metrics_frame(part, metrics.full_ranking_metrics(full_ranks), protocol="full_ranking",
                                      **labels),
    ]
    return pd.concat(frames, ignore_index=True)


def log_metric_means(frame: pd.DataFrame) -> None:
    means = frame.groupby(["protocol", "split", "metric"])["value"].mean()
    for (protocol, split), group in means.groupby(level=[0, 1]):
        text = ", ".join(f"{m} {v:.4f}" for (_, _, m), v in group.items())
        log.info("%s %s: %s", protocol, split, text)


# ----------------------------------------------------------------------------- stage


def export(surrogate: Surrogate, samples: pd.DataFrame, out_dir: str | os.PathLike, dataset: str,
           settings: dict[str, Any], seed: int) -> pd.DataFrame:
    """Write every surrogate artifact into `out_dir` (built aside, swapped in at once)."""
    reprs = sequence_representations(surrogate, samples["history"].tolist())
    embeddings = item_embeddings(surrogate)
    metric_frame = evaluate_surrogate(surrogate, samples, dataset, representations=reprs)
    log_metric_means(metric_frame)
    vector = pa.list_(pa.float32())
    with io.atomic_dir(out_dir) as tmp:
        save_surrogate(surrogate, tmp)
        io.write_parquet(
            pa.table({"item_id": pa.array(surrogate.item_ids, pa.string()),
                      "embedding": pa.array(list(embeddings), vector)}),
            tmp / "item_embeddings.parquet", config=settings, seed=seed)
        io.write_parquet(
            pa.table({"sample_id": pa.array(samples["sample_id"].astype(str).tolist(), pa.string()),
                      "repr": pa.array(list(reprs), vector)}),
            tmp / "sequence_repr.parquet", config=settings, seed=seed)
        io.write_parquet(metric_frame, tmp / "metrics.parquet", config=settings, seed=seed)
    return metric_frame


def trained(samples_path: str, items_path: str, spec: dict | None, seed: int):
    """(samples, settings, the trained surrogate) from the stage's inputs, checked."""
    samples = pd.read_parquet(samples_path)
    items = pd.read_parquet(items_path, columns=["item_id"])
    check_samples(samples, source=samples_path)
    item_vocabulary(samples, items, source=items_path)
    settings = resolve_settings(spec)
    return samples, settings, train_surrogate(samples, items, settings, seed=seed)


def run_stage(samples_path: str, items_path: str, out_dir: str, dataset: str, spec: dict | None, seed: int) -> None:
    samples, settings, surrogate = trained(samples_path, items_path, spec, seed)
    export(surrogate, samples, out_dir, dataset, settings, seed)


def run_trial(samples_path: str, items_path: str, out_dir: str, dataset: str, spec: dict | None, seed: int) -> None:
    """A tuning trial (workflow/tuning.py): the model and its validation-split metrics only, so a
    trial never reads the test split (`test_of_trial` evaluates the selected trials there)."""
    samples, settings, surrogate = trained(samples_path, items_path, spec, seed)
    frame = evaluate_surrogate(surrogate, samples, dataset, splits=("valid",))
    log_metric_means(frame)
    with io.atomic_dir(out_dir) as tmp:
        save_surrogate(surrogate, tmp)
        io.write_parquet(frame, tmp / "valid.parquet", config=settings, seed=seed)


def test_of_trial(trial_dir: str, samples_path: str, dataset: str, out: str) -> None:
    """A trained trial's test-split metrics (the tuned table reads them for the selected trials)."""
    samples = pd.read_parquet(samples_path)
    check_samples(samples, source=samples_path)
    frame = evaluate_surrogate(load_surrogate(trial_dir), samples, dataset, splits=("test",))
    log_metric_means(frame)
    io.write_parquet(frame, out)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser("Train the SASRec surrogate (RecBole) and export embeddings and baseline metrics.")
    p.add_argument("--samples", required=True, help="results/{dataset}/data/samples.parquet")
    p.add_argument("--items", required=True, help="results/{dataset}/data/items.parquet")
    p.add_argument("--out-dir", required=True, help="results/{dataset}/surrogate")
    p.add_argument("--dataset", required=True, help="dataset name written into metrics.parquet")
    p.add_argument("--spec", type=cli.json_arg, default=None, help="the config's `surrogate` block as JSON")
    # not required as in the other stages: rule sasrec_trial_test runs --test-of without one (it trains nothing)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--trial", action="store_true", help="a tuning trial: model and validation metrics only")
    p.add_argument("--test-of", help="a trial's folder: write its model's test metrics to --out-dir's test.parquet")

    def stage(args: argparse.Namespace) -> None:
        if args.test_of:
            test_of_trial(args.test_of, args.samples, args.dataset, str(Path(args.out_dir) / "test.parquet"))
        elif args.trial:
            run_trial(args.samples, args.items, args.out_dir, args.dataset, args.spec, args.seed)
        else:
            run_stage(args.samples, args.items, args.out_dir, args.dataset, args.spec, args.seed)

    return cli.run(stage, p, argv)


if __name__ == "__main__":
    sys.exit(main())
