"""Two baselines every LLM row is read against (DESIGN section 6), on the stored samples.

- `random` (selection `none`): the EXACT expectation of a uniformly random ranking, per sample.
  Under a uniform ranking the target's 0-based rank is uniform on 0..n-1, so with n ranked items
  hr@k = min(k, n) / n, ndcg@k = (1/n) sum_{r<min(k,n)} 1/log2(r+2), mrr = (1/n) sum_{r=1..n} 1/r
  and auc = 0.5. No simulation, hence no seed-dependent noise in the reference line.
- `popularity` (selection `all`): each item scored by how many TRAIN samples have it as target
  (what the surrogate trains on; valid and test targets never count), ranked by
  `workflow.metrics` with pessimistic ties like every other row.

Protocols as the surrogate's: `likelihood` ranks each sample's stored candidates (n = its
candidate count); `full_ranking` ranks the item universe `prepare.item_vocabulary` minus the
sample's history items other than its target (as `metrics.full_ranking_ranks` excludes them),
which is also what the LLMs' grounded protocol ranks. Splits valid and test.

Output: one long per-sample metrics table (`metrics.FRAME_COLUMNS`), e.g.
`python -m workflow.baselines --samples S --items I --dataset D --seed 42 --out metrics.parquet`.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from workflow import cli, metrics
from workflow.baseline_table import BASELINES
from workflow.io import write_parquet
from workflow.prepare import check_samples, item_vocabulary, read_samples

log = logging.getLogger(__name__)

SPLITS = ("valid", "test")


def _expected_hr_ndcg(n: np.ndarray, hr_ks: Sequence[int], ndcg_ks: Sequence[int]) -> dict[str, np.ndarray]:
    n = np.asarray(n, dtype=np.int64)
    if (n < 1).any():
        raise ValueError("every sample needs at least one ranked item")
    # gain[m] = sum_{r<m} 1/log2(r+2): the DCG of the first m ranks
    top = max([*hr_ks, *ndcg_ks])
    gain = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(top) + 2.0))]
    values = {f"hr@{k}": np.minimum(k, n) / n for k in hr_ks}
    values |= {f"ndcg@{k}": gain[np.minimum(k, n)] / n for k in ndcg_ks}
    return values


def random_candidate_metrics(n_candidates: Sequence[int]) -> dict[str, np.ndarray]:
    """Expected `metrics.candidate_metrics` of a uniformly random ranking of n candidates."""
    n = np.asarray(n_candidates, dtype=np.int64)
    if (n < 2).any():
        raise ValueError("AUC needs at least one negative candidate per sample")
    values = _expected_hr_ndcg(n, metrics.CANDIDATE_KS["hr"], metrics.CANDIDATE_KS["ndcg"])
    harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, n.max(initial=0) + 1))]
    values["mrr"] = harmonic[n] / n
    values["auc"] = np.full(len(n), 0.5)
    return values


def random_full_ranking_metrics(n_items: Sequence[int],
                                ks: Sequence[int] = metrics.FULL_RANKING_KS) -> dict[str, np.ndarray]:
    """Expected `metrics.full_ranking_metrics` of a uniformly random ranking of n items."""
    return _expected_hr_ndcg(n_items, ks, ks)


def ranked_item_counts(samples: pd.DataFrame, n_items: int) -> np.ndarray:
    """Items each sample's full ranking ranks: all items minus its distinct history items other
    than the target (the exclusion of `metrics.full_ranking_ranks`)."""
    return np.array([n_items - len(set(map(str, h)) - {str(t)}) for h, t in zip(samples["history"], samples["target"])],
                    dtype=np.int64)


def popularity_scores(samples: pd.DataFrame, vocabulary: Sequence[str]) -> np.ndarray:
    """Per item of `vocabulary`: the number of train samples whose target it is."""
    counts = samples.loc[samples["split"] == "train", "target"].astype(str).value_counts()
    return counts.reindex(list(vocabulary), fill_value=0).to_numpy(np.float64)


def popularity_full_ranks(samples: pd.DataFrame, scores: np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
    column_of = {item: k for k, item in enumerate(vocabulary)}
    targets = np.array([column_of[str(t)] for t in samples["target"]], dtype=np.int64)
    history = [[column_of[str(i)] for i in h] for h in samples["history"]]
    ranks = [metrics.full_ranking_ranks(np.broadcast_to(scores, (len(targets[rows]), len(scores))),
                                        targets[rows], exclude=history[rows])
             for rows in metrics.score_blocks(len(targets), len(scores))]
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def evaluate_baselines(samples: pd.DataFrame, items: pd.DataFrame, dataset: str,
                       splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """Per-sample metrics (workflow.metrics format) of `random` and `popularity` on `splits`."""
    check_samples(samples)
    vocabulary = item_vocabulary(samples, items)
    part = samples[samples["split"].isin(splits)].reset_index(drop=True)
    if part.empty:
        raise ValueError(f"samples: no {'/'.join(splits)} samples to evaluate")
    candidates = part["candidates"].map(lambda c: [str(x) for x in c])
    target_col = metrics.target_columns(candidates, part["target"].astype(str), part["sample_id"])

    scores = popularity_scores(samples, vocabulary)
    column_of = {item: k for k, item in enumerate(vocabulary)}
    candidate_scores = np.array([[scores[column_of[c]] for c in cands] for cands in candidates], dtype=np.float64)

    values = {
        ("random", "likelihood"): random_candidate_metrics(candidates.map(len).to_numpy()),
        ("random", "full_ranking"): random_full_ranking_metrics(ranked_item_counts(part, len(vocabulary))),
        ("popularity", "likelihood"): metrics.candidate_metrics(candidate_scores, target_col),
        ("popularity", "full_ranking"): metrics.full_ranking_metrics(popularity_full_ranks(part, scores, vocabulary)),
    }
    return pd.concat([metrics.ranking_metrics_frame(part, v, dataset=dataset, method=m, selection=BASELINES[m],
                                                    protocol=p)
                      for (m, p), v in values.items()], ignore_index=True)


def main(argv=None) -> int:
    p = cli.parser("Per-sample metrics of the random (exact expectation) and popularity baselines.")
    p.add_argument("--samples", required=True, help="results/{dataset}/data/samples.parquet")
    p.add_argument("--items", required=True, help="results/{dataset}/data/items.parquet")
    p.add_argument("--dataset", required=True, help="dataset name written into the metrics")
    # Both baselines are deterministic; the seed is only recorded, like every artifact's.
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="results/{dataset}/baselines/metrics.parquet")

    def run(args):
        samples = read_samples(args.samples)
        items = pd.read_parquet(args.items, columns=["item_id"])
        frame = evaluate_baselines(samples, items, args.dataset)
        means = frame[frame["split"] == "test"].groupby(["method", "protocol", "metric"], sort=False)["value"].mean()
        for (method, protocol), group in means.groupby(level=[0, 1], sort=False):
            log.info("%s %s test: %s", method, protocol, ", ".join(f"{m} {v:.4f}" for (_, _, m), v in group.items()))
        write_parquet(frame, args.out, seed=args.seed, config={"dataset": args.dataset, "splits": list(SPLITS)},
                      inputs=[args.samples, args.items])

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
