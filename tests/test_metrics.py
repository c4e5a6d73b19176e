"""Ranking metrics against hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest

from workflow import metrics


def test_rank_hr_ndcg_mrr_auc_by_hand():
    scores = np.array([[0.1, 0.9, 0.5, 0.3]])  # target 0.5: only 0.9 is above it
    values = metrics.candidate_metrics(scores, np.array([2]))
    assert metrics.target_ranks(scores, [2]).tolist() == [1]
    assert values["hr@1"].tolist() == [0.0]
    assert values["hr@5"].tolist() == [1.0]
    assert values["ndcg@5"][0] == pytest.approx(1 / math.log2(3))
    assert values["ndcg@10"][0] == pytest.approx(1 / math.log2(3))
    assert values["mrr"].tolist() == [0.5]
    assert values["auc"][0] == pytest.approx(2 / 3)  # 0.1 and 0.3 below, 0.9 above


def test_ndcg_is_zero_beyond_k_and_one_at_the_top():
    ranks = np.array([0, 4, 5, 9, 10])
    assert metrics.ndcg(ranks, 5).tolist() == pytest.approx([1.0, 1 / math.log2(6), 0.0, 0.0, 0.0])
    assert metrics.hit_rate(ranks, 10).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_constant_scores_get_the_worst_rank():
    scores = np.ones((2, 4))
    values = metrics.candidate_metrics(scores, np.array([0, 3]))
    assert metrics.target_ranks(scores, [0, 3]).tolist() == [3, 3]
    assert values["hr@1"].tolist() == [0.0, 0.0]
    assert values["mrr"].tolist() == [0.25, 0.25]
    assert values["ndcg@5"] == pytest.approx([1 / math.log2(5)] * 2)
    assert values["auc"].tolist() == [0.5, 0.5]


def test_a_tie_counts_against_the_target_in_rank_and_half_in_auc():
    scores = np.array([[0.5, 0.2, 0.5]])
    assert metrics.target_ranks(scores, [0]).tolist() == [1]
    assert metrics.auc_per_sample(scores, [0]).tolist() == [0.75]


def test_nan_scores_count_as_worst():
    assert metrics.target_ranks(np.array([[np.nan, 0.1, 0.2]]), [0]).tolist() == [2]
    assert metrics.auc_per_sample(np.array([[np.nan, 0.1, 0.2]]), [0]).tolist() == [0.0]
    assert metrics.target_ranks(np.array([[0.3, np.nan, 0.1]]), [0]).tolist() == [0]


def test_per_user_auc_differs_from_pooled_auc():
    # user a: scores everything high, user b low; each ranks its own target first
    scores = np.array([[10.0, 9.0], [2.0, 1.0]])
    target = np.array([0, 0])
    per_sample = metrics.auc_per_sample(scores, target)
    assert per_sample.tolist() == [1.0, 1.0]
    assert metrics.auc_per_user(per_sample, ["a", "b"]) == 1.0
    # pooled pairs: 10>9, 10>1, 2<9, 2>1
    assert metrics.auc_pooled(scores, target) == pytest.approx(0.75)


def test_per_user_auc_weights_users_not_samples():
    sample_auc = np.array([1.0, 1.0, 0.0])
    assert metrics.auc_per_user(sample_auc, ["a", "a", "b"]) == 0.5
    assert sample_auc.mean() == pytest.approx(2 / 3)


def test_pooled_auc_counts_ties_as_half_and_handles_nan():
    scores = np.array([[1.0, 1.0], [np.nan, 0.0]])
    # pairs: (1 vs 1) tie, (1 vs 0) win, (-inf vs 1) loss, (-inf vs 0) loss
    assert metrics.auc_pooled(scores, np.array([0, 0])) == pytest.approx(1.5 / 4)


def test_full_ranking_excludes_history_but_never_the_target():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]] * 3)
    target = np.array([2, 2, 2])
    ranks = metrics.full_ranking_ranks(scores, target, exclude=[[], [0], [0, 2]])
    assert ranks.tolist() == [2, 1, 1]
    values = metrics.full_ranking_metrics(ranks)
    assert sorted(values) == ["hr@1", "hr@10", "hr@20", "hr@5", "ndcg@1", "ndcg@10", "ndcg@20", "ndcg@5"]
    assert values["hr@1"].tolist() == [0.0, 0.0, 0.0]
    assert values["ndcg@5"] == pytest.approx([0.5, 1 / math.log2(3), 1 / math.log2(3)])


def test_target_columns_requires_exactly_one_target():
    assert metrics.target_columns([["a", "b"], ["c", "d"]], ["b", "c"], ["s1", "s2"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="sample 's2'.*appears 0 times"):
        metrics.target_columns([["a", "b"], ["c", "d"]], ["b", "x"], ["s1", "s2"])
    with pytest.raises(ValueError, match="appears 2 times"):
        metrics.target_columns([["a", "a"]], ["a"], ["s1"])


def test_bad_target_column_is_rejected():
    with pytest.raises(ValueError, match="out of range"):
        metrics.target_ranks(np.zeros((1, 3)), [3])
    with pytest.raises(ValueError, match="one target column per sample"):
        metrics.target_ranks(np.zeros((2, 3)), [0])


def test_ranking_metrics_frame_is_long_per_sample():
    samples = pd.DataFrame({"sample_id": ["s1", "s2"], "user_id": ["u1", "u2"], "split": ["test", "valid"]})
    frame = metrics.ranking_metrics_frame(
        samples, {"hr@1": np.array([1, 0]), "mrr": np.array([1.0, 0.5])},
        dataset="d", method="sasrec", selection="all", protocol="likelihood",
    )
    assert list(frame.columns) == metrics.FRAME_COLUMNS
    assert len(frame) == 4
    assert frame["value"].dtype == np.float64
    row = frame[(frame.sample_id == "s2") & (frame.metric == "mrr")].iloc[0]
    assert (row.split, row.user_id, row.value, row.method) == ("valid", "u2", 0.5, "sasrec")
    with pytest.raises(ValueError, match="metric 'mrr'"):
        metrics.ranking_metrics_frame(samples, {"mrr": np.array([1.0])}, dataset="d", method="m",
                                      selection="all", protocol="likelihood")


def test_score_blocks_cover_the_rows_within_the_cell_budget(monkeypatch):
    monkeypatch.setattr(metrics, "SCORE_CELLS", 10)
    assert list(metrics.score_blocks(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 9)]  # 3 rows x 3 items
    assert list(metrics.score_blocks(2, 50)) == [slice(0, 1), slice(1, 2)]  # at least one row a block
    assert list(metrics.score_blocks(0, 3)) == []
