"""The `random` and `all` selections, and the nested seeded subsets a run's `-n<budget>` takes of
a random selection."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def train_ids(samples: pd.DataFrame) -> np.ndarray:
    """The train samples' ids, sorted (so nothing depends on the row order of samples)."""
    ids = np.sort(samples.loc[samples["split"] == "train", "sample_id"].astype(str).to_numpy(dtype=object))
    if len(ids) == 0:
        raise ValueError("no train samples to select from")
    return ids


def select_random(ids: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """`budget` of the sorted ids drawn uniformly by a seeded generator (all when budget >= len)."""
    if budget >= len(ids):
        log.warning("budget %d >= %d train samples: selecting all", budget, len(ids))
        return ids
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=budget, replace=False))


def nested_subset(sample_ids, budget: int, seed: int) -> list[str]:
    """`budget` of the ids, sorted: the first `budget` of one seeded permutation of the sorted ids,
    so a smaller budget's subset lies inside a larger one's (learning curves add data, they do not
    swap it). The whole list when budget >= its length."""
    ids = np.sort(np.asarray(list(sample_ids), dtype=object))
    if budget >= len(ids):
        return ids.astype(str).tolist()
    order = np.random.default_rng([seed, 0x5B5E7]).permutation(len(ids))
    return np.sort(ids[order[:budget]]).astype(str).tolist()


def candidate_pool(ids: np.ndarray, max_candidates: int | None, seed: int) -> np.ndarray:
    """The samples DEALRec scores and selects from: every id, or a seeded `max_candidates` of them
    (sorted), the same for every DEALRec strategy so that they compare on one pool."""
    ids = np.sort(np.asarray(ids, dtype=object))
    if max_candidates is None or max_candidates >= len(ids):
        return ids.astype(str)
    order = np.random.default_rng([seed, 0xCA4D]).permutation(len(ids))
    return np.sort(ids[order[:max_candidates]]).astype(str)
