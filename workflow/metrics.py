"""Ranking metrics shared by the SASRec surrogate and every LLM evaluation protocol.

Everything works from a score matrix (one row per sample, higher = better) and the column of the
target, and returns one value per sample, so the summary can bootstrap over samples. Ranks are
0-based: rank 0 means the target comes first.

Ties are PESSIMISTIC: the rank is the number of OTHER candidates scoring >= the target. A model
that gives every candidate the same score (a collapsed LLM, a constant baseline, an all-NaN row)
then gets the worst rank instead of the best; counting only strictly greater scores would give
such a model HR@1 = 1. NaN scores count as -inf, i.e. as the worst possible score.

`ranking_metrics_frame` turns per-sample values into the long metrics table every evaluation
writes: dataset, method, selection, protocol, split, sample_id, user_id, metric, value.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

CANDIDATE_KS = {"hr": (1, 5), "ndcg": (5, 10)}
FULL_RANKING_KS = (1, 5, 10, 20)
FRAME_COLUMNS = ["dataset", "method", "selection", "protocol", "split", "sample_id", "user_id", "metric", "value"]
SCORE_CELLS = 20_000_000  # a full ranking's score block (rows x items) held in memory at once


def _clean(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a matrix [n_samples, n_candidates], got shape {scores.shape}")
    return np.where(np.isnan(scores), -np.inf, scores)


def _checked_targets(scores: np.ndarray, target_col: np.ndarray) -> np.ndarray:
    target_col = np.asarray(target_col, dtype=np.int64)
    if target_col.shape != (scores.shape[0],):
        raise ValueError(f"need one target column per sample: {target_col.shape} for {scores.shape[0]} samples")
    if ((target_col < 0) | (target_col >= scores.shape[1])).any():
        raise ValueError(f"target column out of range [0, {scores.shape[1]})")
    return target_col


def _target_scores(scores: np.ndarray, target_col: np.ndarray) -> np.ndarray:
    target_col = _checked_targets(scores, target_col)
    return scores[np.arange(len(target_col)), target_col]


def target_ranks(scores: np.ndarray, target_col: np.ndarray) -> np.ndarray:
    """Pessimistic 0-based rank of each target: how many other columns score >= it."""
    scores = _clean(scores)
    target = _target_scores(scores, target_col)
    return (scores >= target[:, None]).sum(axis=1) - 1  # minus the target itself


def full_ranking_ranks(
    scores: np.ndarray, target_index: np.ndarray, exclude: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """Pessimistic rank of each target among all items (columns), ignoring each row's `exclude`
    columns (its history items). RecBole masks a user's past interactions this way in full-sort
    evaluation of general recommenders; we do it for every model, so that re-recommending an item
    already in the history neither helps nor hurts. The target itself is never excluded (a repeat
    interaction stays rankable)."""
    scores = _clean(scores)
    target = _target_scores(scores, target_index)
    at_least_target = scores >= target[:, None]
    if exclude is not None:
        if len(exclude) != scores.shape[0]:
            raise ValueError(f"exclude has {len(exclude)} rows for {scores.shape[0]} samples")
        rows = np.repeat(np.arange(scores.shape[0]), [len(e) for e in exclude])
        cols = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]) if len(rows) else rows
        keep_target = cols != np.asarray(target_index)[rows]
        at_least_target[rows[keep_target], cols[keep_target]] = False
    return at_least_target.sum(axis=1) - 1


def score_blocks(n_rows: int, n_items: int) -> Iterator[slice]:
    """Row slices that a full ranking scores at once: as many rows as SCORE_CELLS allows for
    `n_items` columns (at least one), so memory stays bounded whatever the catalogue's size."""
    block = max(1, SCORE_CELLS // max(n_items, 1))
    return (slice(start, start + block) for start in range(0, n_rows, block))


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """One relevant item: DCG = 1 / log2(rank + 2) within the top k, and the ideal DCG is 1."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    return 1.0 / (np.asarray(ranks, dtype=np.float64) + 1.0)


def auc_per_sample(scores: np.ndarray, target_col: np.ndarray) -> np.ndarray:
    """Share of the sample's negatives scored strictly below its target; a tie counts one half."""
    scores = _clean(scores)
    target = _target_scores(scores, target_col)
    n_negatives = scores.shape[1] - 1
    if n_negatives < 1:
        raise ValueError("AUC needs at least one negative candidate per sample")
    below = (scores < target[:, None]).sum(axis=1)
    ties = (scores == target[:, None]).sum(axis=1) - 1  # minus the target itself
    return (below + 0.5 * ties) / n_negatives


def auc_per_user(sample_auc: np.ndarray, user_ids: Sequence) -> float:
    """DMPO's headline AUC: each user's samples averaged first, then the users averaged, so
    that users with many samples do not dominate."""
    frame = pd.DataFrame({"user_id": np.asarray(user_ids), "auc": np.asarray(sample_auc, dtype=np.float64)})
    return float(frame.groupby("user_id", sort=False)["auc"].mean().mean())


def auc_pooled(scores: np.ndarray, target_col: np.ndarray) -> float:
    """The DMPO authors' notebook version: every target against every negative of every sample,
    pooled across users, so a user whose scores are all high lifts AUC for the others."""
    scores = _clean(scores)
    target_col = _checked_targets(scores, target_col)
    is_target = np.zeros(scores.shape, dtype=bool)
    is_target[np.arange(scores.shape[0]), target_col] = True
    # Imported here, not at the top: scipy.stats and sklearn.metrics add ~1.5 s to the start-up of
    # every job that imports this module, and only this variant uses them.
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    # roc_auc_score rejects -inf; ranks (ties averaged) keep the order and the ties
    return float(roc_auc_score(is_target.ravel(), rankdata(scores.ravel())))


def candidate_metrics(scores: np.ndarray, target_col: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample HR@1, HR@5, NDCG@5, NDCG@10, MRR and AUC over a candidate set."""
    ranks = target_ranks(scores, target_col)
    values = {f"hr@{k}": hit_rate(ranks, k) for k in CANDIDATE_KS["hr"]}
    values |= {f"ndcg@{k}": ndcg(ranks, k) for k in CANDIDATE_KS["ndcg"]}
    values["mrr"] = reciprocal_rank(ranks)
    values["auc"] = auc_per_sample(scores, target_col)
    return values


def top_changed(scores: np.ndarray, other_scores: np.ndarray) -> np.ndarray:
    """Per sample 1.0 when the top-scoring column differs between two score matrices of the same
    candidates (same column order), else 0.0: position bias, when `other_scores` come from the
    candidates listed in another order. A tie for the top goes to the first column in both."""
    scores, other_scores = _clean(scores), _clean(other_scores)
    if scores.shape != other_scores.shape:
        raise ValueError(f"score matrices of different shapes: {scores.shape} and {other_scores.shape}")
    return (scores.argmax(axis=1) != other_scores.argmax(axis=1)).astype(np.float64)


def full_ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = FULL_RANKING_KS) -> dict[str, np.ndarray]:
    """Per-sample HR@K and NDCG@K from the target's rank among all items."""
    values = {f"hr@{k}": hit_rate(ranks, k) for k in ks}
    values |= {f"ndcg@{k}": ndcg(ranks, k) for k in ks}
    return values


def target_columns(candidates: Sequence[Sequence[str]], targets: Sequence[str],
                   sample_ids: Sequence[str]) -> np.ndarray:
    """Column of each target in its candidate list; the target must appear exactly once."""
    columns = np.empty(len(targets), dtype=np.int64)
    for row, (cands, target, sample_id) in enumerate(zip(candidates, targets, sample_ids)):
        hits = [i for i, c in enumerate(cands) if c == target]
        if len(hits) != 1:
            raise ValueError(f"sample '{sample_id}': target '{target}' appears {len(hits)} times in its candidates")
        columns[row] = hits[0]
    return columns


def ranking_metrics_frame(
    samples: pd.DataFrame,
    values: Mapping[str, np.ndarray],
    *,
    dataset: str,
    method: str,
    selection: str,
    protocol: str,
) -> pd.DataFrame:
    """Long per-sample metrics table. `samples` holds sample_id, user_id and split, one row per
    sample, aligned with every array in `values` (metric name -> per-sample values)."""
    missing = {"sample_id", "user_id", "split"} - set(samples.columns)
    if missing:
        raise KeyError(f"samples lack columns {sorted(missing)}")
    parts = []
    for metric, metric_values in values.items():
        metric_values = np.asarray(metric_values, dtype=np.float64)
        if metric_values.shape != (len(samples),):
            raise ValueError(f"metric '{metric}': {metric_values.shape} values for {len(samples)} samples")
        parts.append(
            pd.DataFrame(
                {
                    "split": samples["split"].astype(str).to_numpy(),
                    "sample_id": samples["sample_id"].astype(str).to_numpy(),
                    "user_id": samples["user_id"].astype(str).to_numpy(),
                    "metric": metric,
                    "value": metric_values,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=FRAME_COLUMNS[4:])
    frame.insert(0, "protocol", protocol)
    frame.insert(0, "selection", selection)
    frame.insert(0, "method", method)
    frame.insert(0, "dataset", dataset)
    return frame[FRAME_COLUMNS].astype({"value": np.float64})
