"""Training seeds through Snakemake on the tiny workflow (tests/tiny_workflow.py): `seeds: [7, 8]`
(7 is the tiny config's `seed`) trains every trained run twice into separate folders, the seed-8 chain
on its own random selection and sft run (a dry run of every method), and one real run of sft at both
seeds, whose metrics the summary pools."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from tiny_workflow import failure, rules_run, snakemake, tiny_config, write_tiny_movielens
from workflow import runs

SEEDS = [7, 8]


def jobs(log: str) -> list[dict[str, str]]:
    """Each job of a Snakemake log: its rule, input, output and shell command (`-p`)."""
    found = []
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", log, flags=re.M)[1:]:
        job = {"rule": re.match(r"(?:local)?rule (\w+):", block)[1]}
        for field in ("input", "output"):
            match = re.search(rf"^\s+{field}: (.*)$", block, flags=re.M)
            job[field] = match[1] if match else ""
        shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        job["shell"] = shell[1] if shell else ""
        found.append(job)
    return found


def job_writing(all_jobs: list[dict[str, str]], path: str) -> dict[str, str]:
    writers = [job for job in all_jobs if path in job["output"].split(", ")]
    assert len(writers) == 1, f"{len(writers)} jobs write {path}"
    return writers[0]


def test_dry_run_gives_every_trained_run_a_folder_per_seed(tmp_path):
    config = {**tiny_config(tmp_path, tmp_path / "model"), "seeds": SEEDS}
    write_tiny_movielens(tmp_path / "raw")  # the workflow checks the raw files when it is parsed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path / "work", tmp_path / "config.yaml", "-n", "-p")
    assert out.returncode == 0, failure(out)
    all_jobs = jobs(out.stdout + out.stderr)
    outputs = [path for job in all_jobs for path in job["output"].split(", ") if path]
    assert len(outputs) == len(set(outputs))  # no two jobs write one path

    trained = [r for r in runs.config_runs({**config, "seeds": None}) if r.method != "base"]
    assert len(trained) == 16  # tiny_config's methods, base aside
    for run in trained:
        at_7, at_8 = (f"results/tiny/llm/{runs.at_seed(run, s, config).name}/random" for s in SEEDS)
        assert at_7 == f"results/tiny/llm/{run.name}/random"  # the config's seed keeps the plain name
        for folder, seed in ((at_7, 7), (at_8, 8)):
            train = job_writing(all_jobs, f"{folder}/adapter")
            assert f"--seed {seed} " in train["shell"]
            selection = "random.parquet" if seed == 7 else f"random-s{seed}.parquet"
            if run.budget is None:
                assert f"results/tiny/selection/{selection}" in train["input"]
            else:  # a -n run reads its own subset step's file, drawn from the seed's selection
                subset = f"results/tiny/selection/budget/{selection[:-len('.parquet')]}-n{run.budget}-s{seed}.parquet"
                assert subset in train["input"]
                assert f"results/tiny/selection/{selection}" in job_writing(all_jobs, subset)["input"]
            job_writing(all_jobs, f"{folder}/test/metrics.parquet")
    # the seed-8 preference and SOFT runs start from the seed-8 sft run
    assert "results/tiny/llm/sft-open-s8/random/adapter" in job_writing(
        all_jobs, "results/tiny/llm/dmpo-open-s8/random/adapter")["input"]
    assert "sft-candidate-n4-s8/random/reference_logprobs.parquet" in job_writing(
        all_jobs, "results/tiny/llm/dmpo-candidate-n4-s8/random/adapter")["input"]
    assert "sft-open-s8/random/self_distilled.parquet" in job_writing(
        all_jobs, "results/tiny/llm/soft-open-s8/random/adapter")["input"]
    # drawn per seed; base evaluated once; showcases at the first seed only
    assert "--strategy random --budget 8 --seed 8 " in job_writing(
        all_jobs, "results/tiny/selection/random-s8.parquet")["shell"]
    assert not [p for p in outputs if "base-open-s" in p or "base-candidate-s" in p]
    assert "results/tiny/llm/dmpo-open/random/explanations.parquet" in outputs
    assert not [p for p in outputs if re.search(r"-s8/.*(explanations|gates)", p)]


RUNS = ("sft-open", "sft-open-s8")  # sft at the config's seed 7 and at seed 8


def metrics_path(results, run: str) -> str:
    return f"{results}/tiny/llm/{run}/random/test/metrics.parquet"


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory, tiny_model_dir):
    """sft under the open prompt at seeds 7 and 8, up to its test metrics (likelihood only; the chains
    from sft, base and the baselines are the dry run's and the unit tests' part: each LLM job costs
    ~15 s here)."""
    tmp = tmp_path_factory.mktemp("tiny-seeds")
    write_tiny_movielens(tmp / "raw")
    config = tiny_config(tmp, tiny_model_dir)
    config.update(seeds=SEEDS, methods=["sft"])
    config["evaluation"]["protocols"] = ["likelihood"]
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp / "work" / "results"
    out = snakemake(tmp / "work", tmp / "config.yaml", *[metrics_path("results", run) for run in RUNS])
    assert out.returncode == 0, failure(out)
    return results, out.stdout + out.stderr


@pytest.mark.slow
def test_each_seed_trains_on_its_own_selection_into_its_own_folder(seeded_run):
    results, log = seeded_run
    # likelihood only: no title embeddings (the grounded protocol's); random and random-s8 from one rule
    assert rules_run(log) == {"ingest": 1, "prepare": 1, "base_model": 1, "select_training_data": 2, "sft": 2,
                              "evaluate": 2}
    selections = [set(pd.read_parquet(results / f"tiny/selection/{name}.parquet")["sample_id"])
                  for name in ("random", "random-s8")]
    assert len(selections[0]) == len(selections[1]) == 8 and selections[0] != selections[1]
    for run, seed in zip(RUNS, SEEDS):
        training = json.loads((results / f"tiny/llm/{run}/random/adapter/training_config.json").read_text())
        assert training["seed"] == seed
        assert set(pd.read_parquet(metrics_path(results, run))["method"]) == {run}
    # two trainings, not one written twice (the tiny model's ranks may agree; its log-probs do not)
    logprobs = [np.concatenate(pd.read_parquet(f"{results}/tiny/llm/{run}/random/test/predictions.parquet")
                               .sort_values("sample_id")["candidate_logprob"].to_list()) for run in RUNS]
    assert logprobs[0].shape == logprobs[1].shape and not np.allclose(logprobs[0], logprobs[1], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_summary_pools_the_two_seeds(seeded_run, tmp_path):
    from workflow import summary

    results, _ = seeded_run
    out = tmp_path / "summary.parquet"
    argv = ["--metrics", *[metrics_path(results, run) for run in RUNS], "--spec", '{"bootstrap": 50, "ci": 0.9}',
            "--seed", "7", "--out-parquet", str(out), "--out-md", str(tmp_path / "summary.md")]
    assert summary.main(argv) == 0
    table = pd.read_parquet(out)
    rows = table[(table["protocol"] == "likelihood") & (table["metric"] == "hr@1")]
    assert set(rows["method"]) == {"sft-open"}
    pooled, per_seed = rows[rows["seed"].isna()].iloc[0], rows.dropna(subset=["seed"]).set_index("seed")
    means = []
    for run, seed in zip(RUNS, SEEDS):
        metrics = pd.read_parquet(metrics_path(results, run))
        means.append(metrics.loc[(metrics["protocol"] == "likelihood") & (metrics["metric"] == "hr@1"), "value"].mean())
        assert per_seed.loc[seed, "value"] == pytest.approx(means[-1])
    assert pooled["n_seeds"] == 2 and pooled["value"] == pytest.approx(sum(means) / 2)
    assert pooled["seed_sd"] == pytest.approx(abs(means[0] - means[1]) / 2 ** 0.5)
    assert pooled["ci_low"] <= pooled["value"] <= pooled["ci_high"]
