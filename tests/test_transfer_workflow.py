"""Cross-domain transfer end to end: sft trained on the tiny MovieLens (movielens-100k files, domain
movie) evaluated on a tiny Amazon Video Games set (amazon-2018 files, domain game), through
Snakemake as a user runs it, up to the summary (~22 jobs, one thread each, ~2 minutes on 2 cores)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tiny_workflow import failure, rules_run, snakemake, tiny_config, write_tiny_movielens
from workflow.io import read_provenance
from workflow.report import summary_html

pytestmark = pytest.mark.slow  # a tiny workflow run of its own (make test schedules these first)

WORDS = ["Star", "Quest", "Racer", "Legends", "Dungeon", "Galaxy", "Kart", "Ninja", "Empire", "Puzzle"]


def write_tiny_amazon_games(folder: Path, n_users: int = 16, n_items: int = 30, seed: int = 0) -> None:
    """Video_Games_5.json.gz (reviews) and meta_Video_Games.json.gz (JSON lines, amazon-2018): each
    user reviews 7 to 10 games on distinct days; one title holds an HTML entity."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    asins = [f"B{i:09d}" for i in range(n_items)]
    meta = [{"asin": asin, "title": f"{WORDS[i % 10]} {WORDS[(i // 10 + 3) % 10]} {i}", "category": ["Video Games"]}
            for i, asin in enumerate(asins)]
    meta[0]["title"] = "Mario &amp; Sonic 0"
    reviews = [{"overall": 5.0, "reviewerID": f"A{u:05d}GAMER", "asin": asins[i], "unixReviewTime": 1400000000 + 86400 * k}
               for u in range(n_users) for k, i in enumerate(rng.choice(n_items, size=rng.integers(7, 11), replace=False))]
    for name, records in (("Video_Games_5.json.gz", reviews), ("meta_Video_Games.json.gz", meta)):
        with gzip.open(folder / name, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("transfer-run")
    write_tiny_movielens(tmp / "raw")
    write_tiny_amazon_games(tmp / "amazon")
    config = tiny_config(tmp, tiny_model_dir)
    config["datasets"]["games"] = {"format": "amazon-2018", "path": str(tmp / "amazon"), "category": "Video_Games",
                                   "domain": "game"}
    config.update(threads_per_job=1, methods=["base", "sft"], transfer=[{"from": "tiny", "to": "games", "methods": ["sft"]}])
    config["sft"]["prompt"] = "candidate"  # likelihood and generation: answers name the games' candidates
    configfile = tmp / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    work = tmp / "work"
    out = snakemake(work, configfile, "results/summary.parquet")
    assert out.returncode == 0, failure(out)
    return work / "results", out.stdout + out.stderr


def test_transferred_sft_is_scored_on_the_target_samples(transfer_run):
    results, log = transfer_run
    assert rules_run(log)["evaluate_transfer"] == 1
    folder = results / "games/transfer/tiny/sft-candidate/random/test"
    metrics = pd.read_parquet(folder / "metrics.parquet")
    predictions = pd.read_parquet(folder / "predictions.parquet")
    samples = pd.read_parquet(results / "games/data/samples.parquet")
    test = samples[samples["split"] == "test"].set_index("sample_id")
    # B's samples and candidate sets, A's adapter, B's domain word
    assert set(metrics["sample_id"]) == set(test.index)
    assert set(metrics["dataset"]) == {"games"} and set(metrics["trained_on"]) == {"tiny"}
    for sample in predictions.itertuples():
        assert list(sample.candidates) == list(test.loc[sample.sample_id, "candidates"])
        assert sample.target == test.loc[sample.sample_id, "target"]
    games = set(pd.read_parquet(results / "games/data/items.parquet")["item_id"])
    assert set(predictions["matched_item"].dropna()) <= games
    provenance = read_provenance(folder / "metrics.parquet")
    assert provenance["config"]["domain"] == "game" and provenance["config"]["prompt"] == "candidate"
    assert Path(provenance["adapter"]).parts[-5:] == ("tiny", "llm", "sft-candidate", "random", "adapter")
    # every protocol of the candidate prompt, as the target's own sft run
    own = pd.read_parquet(results / "games/llm/sft-candidate/random/test/metrics.parquet")
    assert set(metrics["protocol"]) == set(own["protocol"]) >= {"likelihood", "likelihood_norm", "generation"}


def test_summary_has_the_transferred_rows_read_against_the_target(transfer_run):
    results, _ = transfer_run
    summary = pd.read_parquet(results / "summary.parquet")
    own = summary[summary["trained_on"] == summary["dataset"]]
    moved = summary[summary["trained_on"] != summary["dataset"]]
    assert set(own["dataset"]) == {"tiny", "games"}
    assert set(zip(moved["dataset"], moved["trained_on"], moved["method"], moved["selection"])) == {
        ("games", "tiny", "sft-candidate", "random")}
    assert set(moved["protocol"]) == set(own.loc[own["method"] == "sft-candidate", "protocol"]) >= {"likelihood"}
    n_test = int((pd.read_parquet(results / "games/data/samples.parquet")["split"] == "test").sum())
    likelihood = moved[moved["protocol"] == "likelihood"].set_index("metric")
    assert set(likelihood["n"]) == {n_test}
    # paired against the target's own base model and popularity, never against an sft (it is the sft)
    base = own[(own["dataset"] == "games") & (own["method"] == "base-candidate")
               & (own["protocol"] == "likelihood")].set_index("metric")
    assert (likelihood["base_selection"] == "none").all()
    np.testing.assert_allclose(likelihood["delta_vs_base"], likelihood["value"] - base.loc[likelihood.index, "value"])
    assert likelihood["delta_vs_popularity"].notna().all() and likelihood["sft_selection"].isna().all()
    # the target's own sft row is still there, apart from the transferred one
    assert len(own[(own["dataset"] == "games") & (own["method"] == "sft-candidate")]) == len(moved)
    assert "| sft-candidate / random (trained on tiny) |" in (results / "summary.md").read_text()
    assert "sft-candidate / random (trained on tiny)" in summary_html(summary)  # the report's table
