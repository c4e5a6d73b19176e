"""DEALRec's coverage-enhanced sampling (workflow/selection/coverage.py) on constructed scores."""
from __future__ import annotations

import numpy as np
import pytest

from workflow.selection.coverage import combined_score, coverage_sample, equal_width_bins, hard_prune, minmax


def random_scores(rng, n, kind):
    if kind == 0:
        return rng.random(n)
    if kind == 1:
        return rng.exponential(size=n) ** 3  # skewed: many sparse bins at the top
    return rng.integers(0, 5, n).astype(float)  # heavy ties


def test_budget_met_exactly_pruned_never_chosen_every_bin_visited():
    rng = np.random.default_rng(0)
    for trial in range(600):
        n, n_bins = int(rng.integers(5, 400)), int(rng.integers(1, 60))
        scores = random_scores(rng, n, trial % 3)
        kept = n - int(np.floor(0.1 * n))
        budget = int(rng.integers(1, kept))
        result = coverage_sample(scores, budget, hard_prune_share=0.1, n_bins=n_bins, seed=trial)
        assert len(result.chosen) == budget == len(set(result.chosen))
        assert not set(result.chosen) & set(result.pruned)
        assert (result.bins >= 0).all() and (result.bin_of[result.pruned] == -1).all()
        non_empty = set(result.bin_of[result.bin_of >= 0])
        if budget >= len(non_empty):  # each bin gets floor(m / bins left) >= 1 of the budget
            assert set(result.bins) == non_empty


def test_smallest_bin_first_allocation():
    # bins of 1, 2 and 10 samples (3 bins over [0, 3)); budget 6: the 1-bin gives min(1, 6 // 3) = 1,
    # the 2-bin min(2, 5 // 2) = 2, the 10-bin the remaining 3
    scores = np.array([0.0] + [1.5, 1.6] + list(np.linspace(2.5, 3.0, 10)))
    result = coverage_sample(scores, 6, hard_prune_share=0.0, n_bins=3, seed=1)
    assert np.bincount(result.bins, minlength=3).tolist() == [1, 2, 3]


def test_hard_prune_drops_the_top_share():
    scores = np.arange(20, dtype=float)[::-1]  # position 0 has the highest score
    assert hard_prune(scores, 0.1).tolist() == [0, 1]
    result = coverage_sample(scores, 5, hard_prune_share=0.1, n_bins=4, seed=0)
    assert result.pruned.tolist() == [0, 1] and not {0, 1} & set(result.chosen)


def test_same_seed_same_selection():
    scores = np.random.default_rng(3).random(500)
    a = coverage_sample(scores, 100, hard_prune_share=0.1, n_bins=50, seed=7)
    b = coverage_sample(scores, 100, hard_prune_share=0.1, n_bins=50, seed=7)
    c = coverage_sample(scores, 100, hard_prune_share=0.1, n_bins=50, seed=8)
    assert a.chosen.tolist() == b.chosen.tolist()
    assert a.chosen.tolist() != c.chosen.tolist()


def test_budget_above_the_pool_selects_everything_left():
    result = coverage_sample(np.arange(10.0), 50, hard_prune_share=0.1, n_bins=3, seed=0)
    assert result.chosen.tolist() == list(range(9))


def test_equal_width_bins_and_minmax():
    assert equal_width_bins(np.array([0.0, 0.49, 0.5, 1.0]), 2).tolist() == [0, 0, 1, 1]
    assert equal_width_bins(np.array([2.0, 2.0]), 5).tolist() == [0, 0]
    assert minmax(np.array([1.0, 3.0, 2.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax(np.array([4.0, 4.0])).tolist() == [0.0, 0.0]


def test_combined_score_parts():
    influence, effort = np.array([0.0, 10.0, 5.0]), np.array([2.0, 1.0, 3.0])
    assert combined_score(influence, effort, 0.5).tolist() == pytest.approx([0.25, 1.0, 1.0])
    assert combined_score(influence, effort, 0.0).tolist() == [0.0, 1.0, 0.5]  # strategy `influence`
    assert combined_score(None, effort, 1.0).tolist() == [0.5, 0.0, 1.0]  # strategy `effort`
    with pytest.raises(ValueError, match="influence or effort"):
        combined_score(None, None, 1.0)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        coverage_sample(np.array([0.0, np.nan]), 1, hard_prune_share=0.0, n_bins=2, seed=0)
    with pytest.raises(ValueError, match="no scored samples"):
        coverage_sample(np.array([]), 1, hard_prune_share=0.0, n_bins=2, seed=0)
