"""The DEALRec rules through Snakemake on the tiny workflow (tests/tiny_workflow.py): influence and
effort scores, the dealrec selection and its ablations, and an sft run whose -n re-runs DEALRec."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from tiny_workflow import failure, rules_run, snakemake, tiny_config, write_tiny_movielens
from workflow.selection import dealrec

pytestmark = pytest.mark.slow  # a tiny workflow run of its own (make test schedules these first)

TARGETS = ["tiny/selection/dealrec.parquet", "tiny/selection/influence.parquet", "tiny/selection/effort.parquet",
           "tiny/llm/sft-open-n4/dealrec/adapter"]


@pytest.fixture(scope="module")
def dealrec_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("tiny-dealrec")
    write_tiny_movielens(tmp / "raw")
    config = tiny_config(tmp, tiny_model_dir)
    config["selection"] = {"strategies": ["random", "dealrec"], "budget": 8,
                           "dealrec": {"n_bins": 4, "influence": {"depth": 40, "grad_batch": 16},
                                       "effort": {"max_candidates": 20, "batch_size": 4}}}
    config["methods"] = ["sft-open-n4"]
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp / "work" / "results"
    out = snakemake(tmp / "work", tmp / "config.yaml", *[f"results/{t}" for t in TARGETS])
    assert out.returncode == 0, failure(out)
    return tmp, results, out.stdout + out.stderr


def test_rules_write_scores_selections_and_logs(dealrec_run):
    tmp, results, log = dealrec_run
    ran = rules_run(log)
    assert ran["influence_scores"] == ran["effort_scores"] == 1 and ran["select_dealrec"] == 3
    samples = pd.read_parquet(results / "tiny/data/samples.parquet")
    train = set(samples.loc[samples["split"] == "train", "sample_id"])
    influence = pd.read_parquet(results / "tiny/selection/scores/influence.parquet")
    effort = pd.read_parquet(results / "tiny/selection/scores/effort.parquet")
    assert set(influence["sample_id"]) == train and influence["influence"].notna().all()
    assert len(effort) == min(20, len(train)) and (effort["effort"] > 0).all()
    for strategy in ("dealrec", "influence", "effort"):
        chosen = pd.read_parquet(results / f"tiny/selection/{strategy}.parquet")
        assert len(chosen) == 8 and set(chosen["sample_id"]) <= set(effort["sample_id"])
        assert dealrec.scores_path(results / f"tiny/selection/{strategy}.parquet").is_file()
    for name in ("influence_scores", "effort_scores", "dealrec"):
        assert (results / f"logs/tiny/selection/{name}.log").is_file()
        assert (results / f"benchmarks/tiny/selection/{name}.tsv").is_file()
    assert "lissa: 100%" in (results / "logs/tiny/selection/influence_scores.log").read_text()
    assert "effort: 100%" in (results / "logs/tiny/selection/effort_scores.log").read_text()


def test_sft_n_trains_on_the_dealrec_selection_at_its_budget(dealrec_run):
    _, results, _ = dealrec_run
    from workflow.selection import subset

    config = json.loads((results / "tiny/llm/sft-open-n4/dealrec/adapter/training_config.json").read_text())
    assert config["config"]["n_samples"] == 4
    chosen = subset(results / "tiny/selection/dealrec.parquet", 4, 7)
    scores = pd.read_parquet(results / "tiny/selection/dealrec.scores.parquet")
    assert len(chosen) == 4 and not set(chosen) & set(scores.loc[scores["pruned"], "sample_id"])


def test_rerun_has_nothing_to_do(dealrec_run):
    tmp, results, _ = dealrec_run
    out = snakemake(tmp / "work", tmp / "config.yaml", "-n", *[f"results/{t}" for t in TARGETS])
    assert out.returncode == 0, failure(out)
    assert "Nothing to be done" in out.stdout + out.stderr
