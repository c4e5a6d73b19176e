"""Baselines: random's exact expectation against every permutation, popularity by hand, the CLI."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from workflow import baselines, metrics
from workflow.io import read_provenance


def permutation_average(values_of_permutation, n: int) -> dict[str, float]:
    """Mean of each metric over all n! orderings (one row per permutation of distinct scores)."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.float64)
    values = values_of_permutation(perms)
    return {name: float(v.mean()) for name, v in values.items()}


@pytest.mark.parametrize("n", [2, 4, 7])
def test_random_candidates_equal_the_average_over_all_permutations(n):
    brute = permutation_average(lambda perms: metrics.candidate_metrics(perms, np.zeros(len(perms), int)), n)
    exact = baselines.random_candidate_metrics([n])
    assert list(exact) == list(brute)  # the same metric names, in the same order
    assert {k: float(v[0]) for k, v in exact.items()} == pytest.approx(brute)
    assert exact["hr@5"][0] == pytest.approx(min(5, n) / n)
    assert exact["mrr"][0] == pytest.approx(sum(1 / r for r in range(1, n + 1)) / n)


def test_random_full_ranking_with_history_excluded_equals_all_permutations():
    # 7 items; the history holds items 1, 2 (twice) and the target 0, which stays rankable: 5 ranked
    target, history = 0, [1, 2, 2, 0]

    def ranked(perms):
        ranks = metrics.full_ranking_ranks(perms, np.full(len(perms), target), exclude=[history] * len(perms))
        return metrics.full_ranking_metrics(ranks)

    brute = permutation_average(ranked, 7)
    sample = pd.DataFrame({"history": [["i1", "i2", "i2", "i0"]], "target": ["i0"]})
    n_ranked = baselines.ranked_item_counts(sample, 7)
    assert n_ranked.tolist() == [5]
    exact = baselines.random_full_ranking_metrics(n_ranked)
    assert list(exact) == list(brute)
    assert {k: float(v[0]) for k, v in exact.items()} == pytest.approx(brute)
    assert exact["hr@1"][0] == pytest.approx(1 / 5) and exact["hr@10"][0] == 1.0


def hand_samples() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train targets: i2 twice, i3 and i4 once. Valid and test targets (i6 three times) must not count:
    if they did, i6 would outscore i4 in sample x3."""
    rows = [
        ("t1", "train", "u1", ["i1"], "i2", ["i2", "i3", "i4"]),
        ("t2", "train", "u2", ["i1"], "i2", ["i2", "i5", "i6"]),
        ("t3", "train", "u3", ["i2"], "i3", ["i3", "i4", "i5"]),
        ("t4", "train", "u1", ["i1", "i2"], "i4", ["i4", "i1", "i6"]),
        ("v1", "valid", "u1", ["i1", "i2"], "i6", ["i6", "i2", "i3"]),
        ("x1", "test", "u1", ["i1", "i2", "i5"], "i3", ["i6", "i3", "i4"]),
        ("x2", "test", "u2", ["i2", "i6"], "i6", ["i6", "i1", "i2"]),
        ("x3", "test", "u3", ["i3"], "i6", ["i6", "i4", "i5"]),
    ]
    samples = pd.DataFrame(rows, columns=["sample_id", "split", "user_id", "history", "target", "candidates"])
    # i7 is in items.parquet but in no sample (removed by the k-core filter): not ranked
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(1, 8)], "title": [f"t{k}" for k in range(1, 8)]})
    return samples, items


def values(frame: pd.DataFrame, method: str, protocol: str, metric: str) -> dict[str, float]:
    sel = frame[(frame["method"] == method) & (frame["protocol"] == protocol) & (frame["metric"] == metric)]
    return dict(zip(sel["sample_id"], sel["value"]))


def test_popularity_by_hand():
    samples, items = hand_samples()
    vocabulary = ["i1", "i2", "i3", "i4", "i5", "i6"]
    assert baselines.popularity_scores(samples, vocabulary).tolist() == [0, 2, 1, 1, 0, 0]
    frame = baselines.evaluate_baselines(samples, items, "toy")
    # candidates: x1's target i3 ties with i4 (pessimistic: rank 1); x2's i6 below i2 and tied with i1
    # (rank 2); x3's i6 below i4 and tied with i5 (rank 2); v1's i6 below i2 and i3 (rank 2)
    assert values(frame, "popularity", "likelihood", "hr@1") == {"v1": 0, "x1": 0, "x2": 0, "x3": 0}
    assert values(frame, "popularity", "likelihood", "mrr") == pytest.approx({"v1": 1 / 3, "x1": 1 / 2, "x2": 1 / 3,
                                                                              "x3": 1 / 3})
    assert values(frame, "popularity", "likelihood", "auc") == pytest.approx({"v1": 0, "x1": 0.75, "x2": 0.25,
                                                                              "x3": 0.25})
    # all items, history other than the target excluded: x1 (history i1, i2, i5) only i4 ties with i3;
    # x2 (history i2; its target i6 stays): i1, i3, i4, i5 score >= 0; x3 (history i3): i1, i2, i4, i5
    full = values(frame, "popularity", "full_ranking", "ndcg@5")
    assert full == pytest.approx({"v1": 1 / np.log2(5), "x1": 1 / np.log2(3), "x2": 1 / np.log2(6),
                                  "x3": 1 / np.log2(6)})
    assert values(frame, "popularity", "full_ranking", "hr@1") == {"v1": 0, "x1": 0, "x2": 0, "x3": 0}


def test_random_rows_use_candidate_and_ranked_item_counts():
    samples, items = hand_samples()
    frame = baselines.evaluate_baselines(samples, items, "toy")
    assert values(frame, "random", "likelihood", "hr@1") == pytest.approx(dict.fromkeys(["v1", "x1", "x2", "x3"], 1 / 3))
    assert values(frame, "random", "likelihood", "auc") == dict.fromkeys(["v1", "x1", "x2", "x3"], 0.5)
    # 6 ranked items (not 7: i7 is in no sample) minus the history other than the target
    assert values(frame, "random", "full_ranking", "hr@1") == pytest.approx(
        {"v1": 1 / 4, "x1": 1 / 3, "x2": 1 / 5, "x3": 1 / 5})


def test_cli_writes_one_metrics_table(tmp_path):
    samples, items = hand_samples()
    samples.to_parquet(tmp_path / "samples.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    out = tmp_path / "baselines" / "metrics.parquet"
    argv = ["--samples", str(tmp_path / "samples.parquet"), "--items", str(tmp_path / "items.parquet"),
            "--dataset", "toy", "--seed", "7", "--out", str(out)]
    assert baselines.main(argv) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == metrics.FRAME_COLUMNS
    assert set(frame["dataset"]) == {"toy"} and set(frame["split"]) == {"valid", "test"}
    runs = set(frame[["method", "selection", "protocol"]].itertuples(index=False, name=None))
    assert runs == {("random", "none", "likelihood"), ("random", "none", "full_ranking"),
                    ("popularity", "all", "likelihood"), ("popularity", "all", "full_ranking")}
    names = frame.groupby("protocol")["metric"].agg(set)
    assert names["likelihood"] == set(metrics.candidate_metrics(np.eye(2), np.zeros(2, int)))
    assert names["full_ranking"] == set(metrics.full_ranking_metrics(np.zeros(1, int)))
    assert not frame.duplicated(["method", "protocol", "sample_id", "metric"]).any()
    assert read_provenance(out)["seed"] == 7
    # an unknown item id in the samples fails with one clear error, and writes nothing
    samples.loc[0, "target"] = "i9"
    samples.to_parquet(tmp_path / "samples.parquet")
    assert baselines.main([*argv[:-1], str(tmp_path / "bad.parquet")]) == 1
    assert not (tmp_path / "bad.parquet").exists()


def test_popularity_full_ranks_do_not_depend_on_the_block_size(monkeypatch):
    samples, items = hand_samples()
    vocabulary = ["i1", "i2", "i3", "i4", "i5", "i6"]
    scores = baselines.popularity_scores(samples, vocabulary)
    whole = baselines.popularity_full_ranks(samples, scores, vocabulary)
    monkeypatch.setattr(metrics, "SCORE_CELLS", len(vocabulary))  # one sample a block
    assert baselines.popularity_full_ranks(samples, scores, vocabulary).tolist() == whole.tolist()


def test_bad_samples_are_named_by_their_file(tmp_path):
    samples, items = hand_samples()
    samples.loc[1, "history"] = []
    samples.to_parquet(tmp_path / "samples.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    argv = ["--samples", str(tmp_path / "samples.parquet"), "--items", str(tmp_path / "items.parquet"),
            "--dataset", "toy", "--seed", "7", "--out", str(tmp_path / "out.parquet")]
    assert baselines.main(argv) == 1
    with pytest.raises(ValueError, match="samples: missing columns \\['candidates'\\]"):
        baselines.evaluate_baselines(samples.drop(columns="candidates"), items, "toy")
