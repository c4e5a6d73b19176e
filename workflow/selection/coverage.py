"""DEALRec's coverage-enhanced sample selection (DESIGN.md section 5), on any score.

    S = minmax(I) + lambda * minmax(E)        (`combined_score`; a missing part counts as 0)

`coverage_sample`: sort by S and drop the top `hard_prune` share (the hardest samples); cut
[min, max] of the rest into `n_bins` equal-width bins; then, until no bin is left: drop the empty
bins, take the smallest, draw min(|bin|, floor(m / bins left)) of it at random, m -= that, remove
the bin. Small bins are taken whole and the budget they leave flows to the larger ones, so every
region of the score range is represented (coverage) instead of only the highest scores.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def minmax(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1]; a constant vector becomes all zeros (it carries no ranking)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def combined_score(influence: np.ndarray | None, effort: np.ndarray | None, lam: float) -> np.ndarray:
    """S = minmax(I) + lam * minmax(E); `influence` None (strategy `effort`) leaves that term out,
    `effort` None (or lam 0, strategy `influence`) the other."""
    if influence is None and effort is None:
        raise ValueError("a combined score needs influence or effort scores")
    parts = []
    if influence is not None:
        parts.append(minmax(influence))
    if effort is not None and lam != 0:
        parts.append(lam * minmax(effort))
    return np.sum(parts, axis=0) if parts else np.zeros(len(influence))


@dataclass(frozen=True)
class Coverage:
    chosen: np.ndarray  # positions (into the score vector) of the selected samples, ascending
    bins: np.ndarray    # the bin of each chosen position
    pruned: np.ndarray  # positions dropped by the hard prune
    bin_of: np.ndarray  # every position's bin, -1 for the pruned ones


def hard_prune(scores: np.ndarray, share: float) -> np.ndarray:
    """Positions of the top `share` of the scores (floor(share * n) of them; ties by position)."""
    n_drop = int(np.floor(share * len(scores)))
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:n_drop])


def equal_width_bins(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0..n_bins-1) of each score in n_bins equal-width bins over [min, max]; the
    maximum falls into the last bin."""
    low, high = scores.min(), scores.max()
    if high == low:
        return np.zeros(len(scores), dtype=np.int64)
    index = np.floor((scores - low) / (high - low) * n_bins).astype(np.int64)
    return np.clip(index, 0, n_bins - 1)


def coverage_sample(scores: np.ndarray, budget: int, *, hard_prune_share: float, n_bins: int,
                    seed: int) -> Coverage:
    """The coverage-enhanced selection of `budget` positions (module docstring), seeded. All the
    samples left after the prune when the budget is not smaller (with a warning)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        raise ValueError("no scored samples to select from")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values")
    pruned = hard_prune(scores, hard_prune_share)
    kept = np.setdiff1d(np.arange(len(scores)), pruned)
    bin_of = np.full(len(scores), -1, dtype=np.int64)
    bin_of[kept] = equal_width_bins(scores[kept], n_bins)
    if budget >= len(kept):
        log.warning("budget %d >= %d samples left after the hard prune: selecting all of them", budget, len(kept))
        return Coverage(kept, bin_of[kept], pruned, bin_of)
    rng = np.random.default_rng([seed, 0xDEA1])
    members = {b: kept[bin_of[kept] == b] for b in np.unique(bin_of[kept])}  # ascending positions
    chosen, remaining = [], budget
    while members:
        # The smallest bin first (ties: the lower bin), so its unused share flows to larger bins.
        b = min(members, key=lambda k: (len(members[k]), k))
        take = min(len(members[b]), remaining // len(members))
        chosen.append(rng.choice(members.pop(b), size=take, replace=False))
        remaining -= take
    chosen = np.sort(np.concatenate(chosen))
    if remaining:  # not reached when the prune leaves >= budget samples (tests/test_selection_coverage.py)
        raise RuntimeError(f"coverage sampling left {remaining} of a budget of {budget} unfilled")
    return Coverage(chosen, bin_of[chosen], pruned, bin_of)
