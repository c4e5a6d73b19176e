"""DEALRec selections from stored scores (workflow/selection/dealrec.py), the selection stage and
the `-n<budget>` dispatch (`workflow.selection.subset`, the step `workflow.selection.budget`)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from workflow.io import read_provenance
from workflow.llm.data import read_training_samples
from workflow.selection.budget import run_budget
from workflow.selection import dealrec, nested_subset, run_selection, subset
from workflow.selection.coverage import minmax
from workflow.selection.random_subset import candidate_pool

N_TRAIN, POOL = 400, 200
SETTINGS = {"dealrec": {"lambda": 0.5, "hard_prune": 0.1, "n_bins": 10, "effort": {"max_candidates": POOL}}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """samples.parquet (400 train, 5 test), influence on every train sample, effort on the pool."""
    tmp = tmp_path_factory.mktemp("dealrec")
    rng = np.random.default_rng(0)
    train = [f"u{k % 40}:{k:04d}" for k in range(N_TRAIN)]
    samples = pd.DataFrame({
        "sample_id": train + [f"t{k}" for k in range(5)], "split": ["train"] * N_TRAIN + ["test"] * 5,
        "history": [["i1", "i2"]] * (N_TRAIN + 5), "target": ["i3"] * (N_TRAIN + 5),
        "candidates": [["i3", "i4"]] * (N_TRAIN + 5)})
    samples.to_parquet(tmp / "samples.parquet")
    pd.DataFrame({"sample_id": train, "influence": rng.normal(size=N_TRAIN)}).to_parquet(tmp / "influence.parquet")
    pool = candidate_pool(np.array(train, dtype=object), POOL, seed=5)
    pd.DataFrame({"sample_id": pool, "effort": rng.exponential(size=POOL), "tokens": 100}).to_parquet(tmp / "effort.parquet")
    return tmp


def select(inputs, strategy, budget=60, name=None):
    out = inputs / "selection" / f"{name or strategy}.parquet"  # not over the score files
    chosen = run_selection(inputs / "samples.parquet", strategy, budget, 5, out, settings=SETTINGS,
                           influence_path=inputs / "influence.parquet", effort_path=inputs / "effort.parquet")
    return out, chosen, pd.read_parquet(dealrec.scores_path(out))


def test_dealrec_selection_and_its_score_table(inputs):
    out, chosen, scores = select(inputs, "dealrec")
    assert len(chosen) == 60 and list(chosen["sample_id"]) == sorted(chosen["sample_id"])
    assert len(scores) == POOL and set(chosen["sample_id"]) <= set(scores["sample_id"])
    expected = minmax(scores["influence"].to_numpy()) + 0.5 * minmax(scores["effort"].to_numpy())
    np.testing.assert_allclose(scores["combined"], expected)
    assert scores["pruned"].sum() == POOL // 10
    assert scores.loc[scores["pruned"], "combined"].min() >= scores.loc[~scores["pruned"], "combined"].max()
    assert not (scores["selected"] & scores["pruned"]).any() and scores["selected"].sum() == 60
    assert scores.loc[scores["pruned"], "bin"].isna().all() and scores.loc[~scores["pruned"], "bin"].notna().all()
    stored = pd.read_parquet(out)
    assert list(stored.columns) == ["sample_id", "influence", "effort", "combined", "bin"]
    assert stored[["influence", "effort", "combined", "bin"]].notna().all().all()
    meta = read_provenance(out)["config"]
    assert meta["strategy"] == "dealrec" and meta["sampling"] == {"lambda": 0.5, "hard_prune": 0.1, "n_bins": 10}


def test_ablations_score_on_the_same_pool(inputs):
    _, _, full = select(inputs, "dealrec")
    _, _, infl = select(inputs, "influence")
    _, _, eff = select(inputs, "effort")
    assert list(infl["sample_id"]) == list(eff["sample_id"]) == list(full["sample_id"])
    np.testing.assert_allclose(infl["combined"], minmax(infl["influence"].to_numpy()))
    assert infl["effort"].isna().all() and eff["influence"].isna().all()
    np.testing.assert_allclose(eff["combined"], minmax(eff["effort"].to_numpy()))


def test_n_dispatch_reruns_dealrec_at_the_budget(inputs):
    out, chosen, scores = select(inputs, "dealrec")
    assert subset(out, 60, 5) == list(chosen["sample_id"])  # the stage's budget gives the selection back
    small = subset(out, 20, 5)
    assert len(small) == 20 == len(set(small)) and small == sorted(small)
    assert not set(small) & set(scores.loc[scores["pruned"], "sample_id"])
    fresh = dealrec.sample(scores[["sample_id", "influence", "effort", "combined"]], 20,
                           {"lambda": 0.5, "hard_prune": 0.1, "n_bins": 10}, 5)[0]
    assert small == list(fresh["sample_id"])
    # what sft trains on for a run's -n20
    run_budget(out, 20, 5, out.with_name("dealrec-n20.parquet"))
    picked = read_training_samples(inputs / "samples.parquet", out.with_name("dealrec-n20.parquet"))
    assert list(picked["sample_id"]) == small
    written = pd.read_parquet(out.with_name("dealrec-n20.parquet"))
    assert written["influence"].notna().all()  # the re-run's samples keep their scores (from the pool)
    with pytest.raises(ValueError, match="after the hard prune"):
        dealrec.rerun_at_budget(out, {"lambda": 0.5, "hard_prune": 0.1, "n_bins": 10}, 181, 5)


def test_n_dispatch_keeps_nested_subsets_for_random(inputs, tmp_path):
    out = tmp_path / "random.parquet"
    chosen = run_selection(inputs / "samples.parquet", "random", 50, 5, out)
    assert chosen[["influence", "effort", "combined", "bin"]].isna().all().all()
    assert subset(out, 10, 5) == nested_subset(chosen["sample_id"], 10, 5)
    assert set(subset(out, 10, 5)) <= set(subset(out, 20, 5))
    plain = tmp_path / "plain.parquet"  # a hand-made selection (no provenance): nested too
    pd.DataFrame({"sample_id": chosen["sample_id"]}).to_parquet(plain)
    assert subset(plain, 10, 5) == subset(out, 10, 5)


def test_missing_scores_are_named(inputs, tmp_path):
    with pytest.raises(ValueError, match="needs the effort scores"):
        run_selection(inputs / "samples.parquet", "dealrec", 10, 5, tmp_path / "x.parquet", settings=SETTINGS,
                      influence_path=inputs / "influence.parquet")
    partial = pd.read_parquet(inputs / "effort.parquet").iloc[1:]
    partial.to_parquet(tmp_path / "effort.parquet")
    with pytest.raises(ValueError, match="effort scores miss 1 candidates"):
        run_selection(inputs / "samples.parquet", "effort", 10, 5, tmp_path / "x.parquet", settings=SETTINGS,
                      effort_path=tmp_path / "effort.parquet")
    out, _, _ = select(inputs, "effort", name="lonely")
    dealrec.scores_path(out).unlink()
    with pytest.raises(FileNotFoundError, match="score table"):
        subset(out, 5, 5)


def test_cli_writes_a_dealrec_selection(inputs, tmp_path):
    import json

    out = tmp_path / "dealrec.parquet"
    cmd = [sys.executable, "-m", "workflow.selection", "--samples", str(inputs / "samples.parquet"),
           "--strategy", "dealrec", "--budget", "30", "--seed", "5", "--spec", json.dumps(SETTINGS),
           "--influence", str(inputs / "influence.parquet"), "--effort", str(inputs / "effort.parquet"),
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_parquet(out)) == 30 and dealrec.scores_path(out).is_file()
    bad = subprocess.run(cmd[:-4] + ["--out", str(tmp_path / "y.parquet")], capture_output=True, text=True)
    assert bad.returncode == 1 and "needs the effort scores" in bad.stderr
