"""Benchmark: SASRec surrogate training to early stop on the embedded MovieLens-100K.

Prints data-preparation seconds, seconds per epoch, epochs run, total training time and the
test metrics, plus the slowdown RecBole's import-time anomaly mode would cost (measured on a
few batches in this run; workflow/recbole_compat.py switches it off).

    .venv/bin/python bench/bench_surrogate.py [--threads 2] [--samples S --items I]

Without --samples, builds ML-100K samples like the prepare stage does (5-core, chronological,
leave-one-out, history window and candidate count from config/config.yaml) from the
ml-100k.inter file inside the RecBole wheel, with ALL train samples (no max_samples cap).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workflow import cli, config, metrics, recbole_compat, surrogate  # noqa: E402


def kcore(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    while True:
        users = inter["user_id"].map(inter["user_id"].value_counts())
        items = inter["item_id"].map(inter["item_id"].value_counts())
        keep = (users >= k) & (items >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def ml100k_samples(max_history: int, n_candidates: int, k: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    import recbole

    folder = Path(recbole.__file__).parent / "dataset_example" / "ml-100k"
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t", dtype={"user_id:token": str, "item_id:token": str})
    inter.columns = ["user_id", "item_id", "rating", "timestamp"]
    inter = kcore(inter.reset_index(names="line"), k)
    inter = inter.sort_values(["user_id", "timestamp", "line"], kind="stable")  # stable tie-break: file order
    item_pool = np.array(sorted(inter["item_id"].unique()))
    rng = np.random.default_rng(seed)
    rows = []
    for user, group in inter.groupby("user_id", sort=True):
        seq = group["item_id"].tolist()
        unseen = item_pool[~np.isin(item_pool, seq)]
        for t in range(1, len(seq)):
            split = "test" if t == len(seq) - 1 else "valid" if t == len(seq) - 2 else "train"
            candidates = list(rng.choice(unseen, n_candidates - 1, replace=False)) + [seq[t]]
            rng.shuffle(candidates)
            rows.append({"sample_id": f"{user}:{t}", "split": split, "user_id": user,
                         "history": seq[max(0, t - max_history):t], "target": seq[t], "candidates": candidates})
    items = pd.DataFrame({"item_id": item_pool})
    return pd.DataFrame(rows), items


def anomaly_slowdown(samples: pd.DataFrame, settings: dict, seed: int, batches: int = 15) -> float:
    """Seconds for `batches` SASRec training steps with anomaly mode on / off."""
    recbole_compat.apply()
    model = surrogate.build_sasrec({
        "model": "SASRec", "n_items": len(surrogate.item_vocabulary(samples)) + 1,
        "max_seq_length": int(samples["history"].map(len).max()), "hidden_size": settings["hidden_size"],
        "n_layers": settings["n_layers"], "n_heads": settings["n_heads"], "inner_size": settings["inner_size"],
        "hidden_dropout_prob": settings["dropout"], "attn_dropout_prob": settings["dropout"], **surrogate.FIXED_MODEL})
    index = {item: k + 1 for k, item in enumerate(surrogate.item_vocabulary(samples))}
    train = samples[samples["split"] == "train"].sample(frac=1.0, random_state=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    size = settings["batch_size"]

    def steps() -> float:
        start = time.perf_counter()
        for b in itertools.islice(range(0, len(train), size), batches):
            part = train.iloc[b : b + size]
            seq, lengths = surrogate.encode_histories(part["history"].tolist(), index, model.max_seq_length)
            target = torch.tensor([index[t] for t in part["target"]])
            optimizer.zero_grad()
            logits = model(seq, lengths) @ model.item_embedding.weight.T
            torch.nn.functional.cross_entropy(logits, target).backward()
            optimizer.step()
        return time.perf_counter() - start

    steps()  # warm-up
    with torch.autograd.set_detect_anomaly(True):
        slow = steps()
    fast = steps()
    return slow / fast


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--samples", help="a samples.parquet (default: built from the embedded ML-100K)")
    p.add_argument("--items", help="the matching items.parquet")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a `surrogate` setting, e.g. --set lr=0.002 (value parsed as JSON)")
    p.add_argument("--no-anomaly-check", action="store_true", help="skip the anomaly-mode comparison")
    args = p.parse_args()
    cli.setup_logging()
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("workflow").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)

    cfg = config.load()
    prep = config.prepare_settings(cfg, "ml-100k")
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    settings = surrogate.resolve_settings({**cfg["surrogate"], **overrides})
    start = time.perf_counter()
    if args.samples:
        samples, items = pd.read_parquet(args.samples), pd.read_parquet(args.items)
    else:
        samples, items = ml100k_samples(prep["max_history"], prep["n_candidates"], prep["kcore"], cfg["seed"])
    counts = samples["split"].value_counts().to_dict()
    print(f"samples: {counts} (built in {time.perf_counter() - start:.1f}s), items {len(items)}, threads {args.threads}")
    print(f"settings: {settings}")

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        model = surrogate.train_surrogate(samples, items, settings, seed=cfg["seed"], workdir=tmp)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    t = model.training
    print(f"data preparation (RecBole files, dataset, loaders): {t['prepare_seconds']:.1f}s")
    print(f"training: {t['epochs_run']} epochs, best epoch {t['best_epoch']}, {t['fit_seconds']:.1f}s "
          f"= {t['seconds_per_epoch']:.2f}s/epoch; train_surrogate wall time {wall:.1f}s, "
          f"CPU time {cpu:.1f}s ({cpu / wall:.2f} cores busy on average; below --threads means contention)")

    start = time.perf_counter()
    frame = surrogate.evaluate_surrogate(model, samples, "ml-100k")
    print(f"evaluation (valid + test, both protocols): {time.perf_counter() - start:.1f}s")
    means = frame[frame.split == "test"].groupby(["protocol", "metric"])["value"].mean()
    for protocol, group in means.groupby(level=0):
        print(f"test {protocol}: " + ", ".join(f"{m} {v:.4f}" for (_, m), v in group.items()))
    test = frame[(frame.split == "test") & (frame.metric == "auc")]
    print(f"test auc per user: {metrics.auc_per_user(test['value'].to_numpy(), test['user_id']):.4f}")

    if not args.no_anomaly_check:
        ratio = anomaly_slowdown(samples, settings, cfg["seed"])
        print(f"anomaly mode on / off, same training steps: {ratio:.1f}x slower")


if __name__ == "__main__":
    main()
