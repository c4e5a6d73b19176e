"""Preparation stage: k-core, ordering, history windows, splits, candidates, caps, CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from workflow import io, prepare
from workflow.config import ROOT
from workflow.prepare import build_samples, kcore_filter

BASE = {"kcore": 1, "max_history": 10, "min_history": 1, "split": "loo", "n_candidates": 5}


def settings(**over):
    return {**BASE, **over}


def table(rows, rating=None):
    """Interactions from (user, item, timestamp) triples."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    df["timestamp"] = df["timestamp"].astype("int64")
    df["rating"] = np.nan if rating is None else np.asarray(rating, dtype=float)
    return df


def filler(n=10):
    """Two other users' interactions with items n0..n{n-1}: the candidate universe is the items left
    in the filtered interactions, so small cases need these as negatives."""
    return [(f"zz{j % 2}", f"n{j}", j) for j in range(n)]


def catalogue(ids, titles=None):
    ids = list(ids)
    return pd.DataFrame(
        {"item_id": ids, "title": titles or [f"Title {i}" for i in ids], "categories": [[] for _ in ids]}
    )


def random_data(n_users=40, n_items=60, seed=0):
    """Users with 4..15 interactions, distinct items per user, timestamps with many ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=rng.integers(4, 16), replace=False):
            rows.append((f"u{u:02d}", f"i{i:02d}", int(rng.integers(0, 30))))
    return table(rows), catalogue(f"i{i:02d}" for i in range(n_items))


def sequences(interactions):
    """The reference chronological order: timestamp, then item_id."""
    df = interactions.sort_values(["user_id", "timestamp", "item_id"])
    return {u: (g["item_id"].tolist(), g["timestamp"].tolist()) for u, g in df.groupby("user_id")}


def naive_kcore(df, k):
    while True:
        ok = (df.groupby("user_id")["item_id"].transform("size") >= k) & (
            df.groupby("item_id")["user_id"].transform("size") >= k
        )
        if ok.all():
            return df
        df = df[ok]


# ---------------------------------------------------------------------------------- filtering


def test_kcore_cascade_reaches_fixed_point():
    # z has 1 interaction -> (c, z) goes -> c has 1 left -> (c, y) goes too; a single pass keeps (c, y).
    df = table([("a", "x", 1), ("a", "y", 2), ("b", "x", 1), ("b", "y", 2), ("c", "y", 1), ("c", "z", 2)])
    users, _ = pd.factorize(df["user_id"])
    items, _ = pd.factorize(df["item_id"])
    keep = kcore_filter(users, items, 2)
    assert sorted(zip(df["user_id"][keep], df["item_id"][keep])) == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]


@pytest.mark.parametrize("k", [2, 4, 6])
def test_kcore_property_matches_reference(k):
    interactions, _ = random_data(n_users=80, n_items=70, seed=k)
    users, _ = pd.factorize(interactions["user_id"])
    items, _ = pd.factorize(interactions["item_id"])
    keep = kcore_filter(users, items, k)
    kept = interactions[keep]
    assert len(kept) > 0
    assert kept.groupby("user_id").size().min() >= k and kept.groupby("item_id").size().min() >= k
    assert kept.equals(naive_kcore(interactions, k))
    assert kcore_filter(users[keep], items[keep], k).all()  # a fixed point


def test_rating_threshold_and_null_ratings():
    df = table([("a", "x", 1), ("a", "y", 2), ("a", "z", 3)], rating=[5.0, 3.0, np.nan])
    assert prepare.apply_rating_threshold(df, None)["item_id"].tolist() == ["x", "y", "z"]
    assert prepare.apply_rating_threshold(df, 4)["item_id"].tolist() == ["x"]
    assert prepare.apply_rating_threshold(df, 3)["item_id"].tolist() == ["x", "y"]


def test_rating_threshold_applies_in_build_samples():
    rows = [("a", f"i{j}", j) for j in range(6)] + [("a", "low", 10), ("b", "low", 1)] + filler(4)
    df = table(rows, rating=[5, 4, 5, 4, 5, 4, 1, 5] + [5] * 4)
    out = build_samples(df, catalogue([f"i{j}" for j in range(6)] + ["low"] + [f"n{j}" for j in range(4)]),
                        settings(rating_threshold=4), 0)
    a = out[out["user_id"] == "a"]
    seen = set(a["target"]) | {i for h in a["history"] for i in h}
    assert seen == {f"i{j}" for j in range(6)}
    # a's low rating is no interaction after the threshold, and b keeps 'low' in the data, so it is
    # one of a's 5 possible negatives (4 drawn per sample)
    assert any("low" in c for c in a["candidates"])


def test_items_without_title_are_dropped():
    rows = [("a", f"i{j}", j) for j in range(8)] + [("b", f"i{j}", j) for j in (1, 2, 7)] + filler()
    ids = [f"i{j}" for j in range(7)] + [f"n{j}" for j in range(10)]  # i7 is missing from items
    titles = ["T0", "", "   "] + [f"T{j}" for j in range(3, 7)] + [f"N{j}" for j in range(10)]
    out = build_samples(table(rows), catalogue(ids, titles), settings(), 0)
    seen = set(out["target"]) | {i for col in ("history", "candidates") for row in out[col] for i in row}
    assert not seen & {"i1", "i2", "i7"}
    assert {"i0", "i3", "i6"} <= seen


def test_duplicate_events_collapse():
    rows = [("a", f"i{j}", j) for j in range(5)] + [("a", "i2", 2), ("a", "i2", 2)] + filler()
    items = catalogue([f"i{j}" for j in range(5)] + [f"n{j}" for j in range(10)])
    out = build_samples(table(rows), items, settings(), 0)
    test = out[out["split"] == "test"].iloc[0]
    assert list(test["history"]) == ["i0", "i1", "i2", "i3"]


# --------------------------------------------------------------------------- order and history


def test_chronological_order_with_item_tie_break_and_row_order_independence():
    rows = [("a", "c", 5), ("a", "b", 5), ("a", "z", 1), ("a", "a", 9), ("a", "y", 5)]
    items = catalogue(["a", "b", "c", "y", "z"] + [f"n{j}" for j in range(10)])
    out = build_samples(table(rows + filler()), items, settings(), 0)
    test = out[(out["split"] == "test") & (out["user_id"] == "a")].iloc[0]
    assert list(test["history"]) + [test["target"]] == ["z", "b", "c", "y", "a"]
    shuffled = table((rows + filler())[::-1])
    pd.testing.assert_frame_equal(out, build_samples(shuffled, items, settings(), 0))


def test_history_window_length_and_order():
    interactions, items = random_data()
    out = build_samples(interactions, items, settings(max_history=3, min_history=2, n_candidates=4), 0)
    seqs = sequences(interactions)
    assert len(out) == sum(len(s) - 2 for s, _ in seqs.values())
    for row in out.itertuples():
        pos = int(row.sample_id.rsplit(":", 1)[1])
        seq = seqs[row.user_id][0]
        assert pos >= 2 and row.target == seq[pos]
        assert list(row.history) == seq[max(0, pos - 3) : pos]


# ------------------------------------------------------------------------------------- splits


def test_loo_split():
    interactions, items = random_data()
    out = build_samples(interactions, items, settings(), 0)
    seqs = sequences(interactions)
    for user, g in out.groupby("user_id"):
        seq = seqs[user][0]
        by_split = {s: g[g["split"] == s] for s in prepare.SPLITS}
        assert len(by_split["test"]) == 1 and len(by_split["valid"]) == 1
        test, valid = by_split["test"].iloc[0], by_split["valid"].iloc[0]
        assert test["target"] == seq[-1] and valid["target"] == seq[-2]
        assert list(test["history"])[-1] == seq[-2]  # standard LOO: test history holds the valid target
        assert sorted(by_split["train"]["target"]) == sorted(seq[1:-2])


def test_loo_short_users_are_train_only():
    rows = [("a", "i0", 1), ("a", "i1", 2), ("b", "i0", 1), ("b", "i1", 2), ("b", "i2", 3)] + filler()
    items = catalogue([f"i{j}" for j in range(3)] + [f"n{j}" for j in range(10)])
    out = build_samples(table(rows), items, settings(), 0)
    assert out.loc[out["user_id"] == "a", "split"].tolist() == ["train"]
    assert out.loc[out["user_id"] == "b", "split"].tolist() == ["valid", "test"]


def test_ratio_split_proportions_and_global_time_order():
    interactions, items = random_data(n_users=50)
    out = build_samples(interactions, items, settings(split="ratio", ratio=[0.8, 0.1, 0.1]), 0)
    n = len(out)
    counts = out["split"].value_counts()
    assert counts["train"] == round(0.8 * n) and counts["valid"] == round(0.9 * n) - round(0.8 * n)
    assert counts["test"] == n - round(0.9 * n)
    ts = {s: out.loc[out["split"] == s, "target_timestamp"] for s in prepare.SPLITS}
    assert ts["train"].max() <= ts["valid"].min() and ts["valid"].max() <= ts["test"].min()


@pytest.mark.parametrize("split", ["loo", "ratio"])
def test_no_leakage(split):
    interactions, items = random_data(n_users=50, seed=3)
    out = build_samples(interactions, items, settings(split=split), 0)
    out["position"] = out["sample_id"].str.rsplit(":", n=1).str[1].astype(int)
    train = out[out["split"] == "train"]
    held_out = out[out["split"] != "train"]
    last_train = train.groupby("user_id").agg(ts=("target_timestamp", "max"), pos=("position", "max"))
    joined = held_out.join(last_train, on="user_id", how="inner")
    assert len(joined) > 0
    assert (joined["target_timestamp"] >= joined["ts"]).all()
    assert (joined["position"] > joined["pos"]).all()
    # no held-out target ever appears in a training sample of the same user
    for row in held_out.itertuples():
        user_train = train[train["user_id"] == row.user_id]
        assert row.target not in set(user_train["target"])
        assert all(row.target not in set(h) for h in user_train["history"])


# --------------------------------------------------------------------------------- candidates


def test_candidate_properties_and_determinism():
    interactions, items = random_data()
    s = settings(n_candidates=8)
    out = build_samples(interactions, items, s, 7)
    seen = interactions.groupby("user_id")["item_id"].agg(set)
    catalogue_ids = set(items["item_id"])
    for row in out.itertuples():
        cands = list(row.candidates)
        assert len(cands) == 8 and len(set(cands)) == 8
        assert cands.count(row.target) == 1
        assert not (set(cands) - {row.target}) & seen[row.user_id]
        assert not (set(cands) - {row.target}) & set(row.history)
        assert set(cands) <= catalogue_ids
    again = build_samples(interactions, items, s, 7)
    assert again["candidates"].tolist() == out["candidates"].tolist()
    other = build_samples(interactions, items, s, 8)
    assert other["candidates"].tolist() != out["candidates"].tolist()
    assert other.drop(columns="candidates").equals(out.drop(columns="candidates"))


def test_negatives_are_uniform_and_shuffled():
    # one user holding items {1, 4} of 10: each of the 8 free items is drawn with probability 3/8
    n = 40_000
    user_items = (np.array([0, 2]), np.array([1, 4]))
    rng = np.random.default_rng(0)
    neg = prepare.draw_negatives(np.zeros(n, dtype=np.int64), user_items, 10, 3, rng)
    assert not np.isin(neg, [1, 4]).any()
    assert (np.sort(neg, axis=1)[:, 1:] != np.sort(neg, axis=1)[:, :-1]).all()
    freq = np.bincount(neg.ravel(), minlength=10)[[0, 2, 3, 5, 6, 7, 8, 9]] / n
    assert np.abs(freq - 3 / 8).max() < 0.015
    cands = prepare.draw_candidates(np.zeros(n, dtype=np.int64), np.full(n, 1), user_items, 10, 4, seed=0)
    target_slot = np.bincount(np.argmax(cands == 1, axis=1), minlength=4) / n
    assert np.abs(target_slot - 0.25).max() < 0.015


def test_negatives_for_a_user_with_barely_enough_free_items():
    # 7 of 10 items taken, 3 negatives needed: every sample must get exactly the 3 free items
    user_items = (np.array([0, 7]), np.array([0, 1, 2, 4, 5, 7, 9]))
    neg = prepare.draw_negatives(np.zeros(100, dtype=np.int64), user_items, 10, 3, np.random.default_rng(1))
    assert (np.sort(neg, axis=1) == [3, 6, 8]).all()


def test_error_when_a_user_lacks_negatives():
    rows = [("heavy", f"i{j}", j) for j in range(8)] + [("light", f"i{j}", j) for j in range(10)]
    with pytest.raises(ValueError, match=r"user 'heavy' interacted with 8 of 10 items.*n_candidates=5"):
        build_samples(table(rows), catalogue(f"i{j}" for j in range(10)), settings(), 0)


# --------------------------------------------------------------------------------------- caps


def test_caps_are_seeded_and_keep_candidates():
    interactions, items = random_data(n_users=60)
    full = build_samples(interactions, items, settings(), 5)
    caps = {"train": 50, "valid": 10, "test": 20}
    capped = build_samples(interactions, items, settings(max_samples=caps), 5)
    assert capped["split"].value_counts().to_dict() == {"train": 50, "test": 20, "valid": 10}
    assert capped["sample_id"].is_monotonic_increasing and full["sample_id"].is_monotonic_increasing
    merged = capped.merge(full, on="sample_id", suffixes=("", "_full"))
    assert len(merged) == len(capped)
    assert merged["candidates"].tolist() == merged["candidates_full"].tolist()
    assert build_samples(interactions, items, settings(max_samples=caps), 5).equals(capped)
    other = build_samples(interactions, items, settings(max_samples=caps), 6)
    assert set(other["sample_id"]) != set(capped["sample_id"])
    # capping one split leaves the others' subsets untouched
    only_train = build_samples(interactions, items, settings(max_samples={"train": 50}), 5)
    assert set(only_train.loc[only_train["split"] == "train", "sample_id"]) == set(
        capped.loc[capped["split"] == "train", "sample_id"]
    )


# ----------------------------------------------------------------------------- settings, CLI


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match=r"prepare.split"):
        prepare.resolve_settings({"split": "random"})
    with pytest.raises(ValueError, match=r"prepare.max_samples.train"):
        prepare.resolve_settings({"max_samples": {"train": 0}})
    assert prepare.resolve_settings({})["n_candidates"] == 20  # defaults from config/schema.yaml


def test_cli_writes_samples_with_provenance(tmp_path):
    interactions, items = random_data()
    io.write_parquet(interactions, tmp_path / "interactions.parquet")
    io.write_parquet(items, tmp_path / "items.parquet")
    spec = settings(kcore=2, max_samples={"test": 15})
    out = tmp_path / "data" / "samples.parquet"
    cmd = [sys.executable, "-m", "workflow.prepare", "--spec", json.dumps(spec), "--seed", "3",
           "--interactions", str(tmp_path / "interactions.parquet"), "--items", str(tmp_path / "items.parquet"),
           "--samples", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "samples test" in done.stderr
    assert pq.read_schema(out).names == list(prepare.SAMPLES_SCHEMA.names)
    assert pq.read_schema(out).field("candidates").type == prepare.SAMPLES_SCHEMA.field("candidates").type
    written = pd.read_parquet(out)
    expected = build_samples(interactions, items, spec, 3)
    assert written["sample_id"].tolist() == expected["sample_id"].tolist()
    assert [list(c) for c in written["candidates"]] == expected["candidates"].tolist()
    meta = io.read_provenance(out)
    assert meta["seed"] == 3 and meta["config"]["max_samples"]["test"] == 15


def test_cli_reports_missing_column(tmp_path, capsys):
    interactions, items = random_data()
    io.write_parquet(interactions.drop(columns="timestamp"), tmp_path / "interactions.parquet")
    io.write_parquet(items, tmp_path / "items.parquet")
    code = prepare.main(["--spec", "{}", "--seed", "0", "--interactions", str(tmp_path / "interactions.parquet"),
                         "--items", str(tmp_path / "items.parquet"), "--samples", str(tmp_path / "s.parquet")])
    assert code == 1
    err = capsys.readouterr().err
    assert "interactions.parquet" in err and "timestamp" in err
    assert not (tmp_path / "s.parquet").exists()


def test_read_samples_checks_what_every_stage_reads(tmp_path):
    samples = pd.DataFrame({"sample_id": ["a", "b", "c"], "split": ["train", "valid", "test"],
                            "user_id": ["u"] * 3, "history": [["i1"], ["i1", "i2"], ["i1", "i2", "i3"]],
                            "target": ["i2", "i3", "i4"], "candidates": [["i2", "i5"], ["i3", "i5"], ["i4", "i5"]]})
    path = tmp_path / "samples.parquet"
    samples.to_parquet(path)
    assert prepare.read_samples(path, ["valid", "test"])["sample_id"].tolist() == ["b", "c"]
    for bad, message in [(samples.drop(columns="user_id"), r"missing columns \['user_id'\]"),
                         (samples.assign(split=["train", "dev", "test"]), "sample 'b' has unknown split 'dev'"),
                         (samples.assign(history=[["i1"], [], ["i1"]]), "sample 'b' has an empty history"),
                         (samples[samples["split"] != "test"], r"no samples in splits \['test'\]")]:
        bad.to_parquet(path)
        with pytest.raises(ValueError, match=f"samples.parquet: {message}"):
            prepare.read_samples(path, ["test"])
    # a stage that does not read a column need not find it
    samples.drop(columns="user_id").to_parquet(path)
    assert len(prepare.read_samples(path, columns=["sample_id", "split", "history"])) == 3
