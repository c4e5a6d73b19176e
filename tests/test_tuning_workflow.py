"""Tuning through Snakemake on the tiny workflow (tests/tiny_workflow.py): sft's and SASRec's trials on
the validation split, the checkpoint's selection, then the test split read for the default and
selected runs only, the tuned table and the overlay; a rerun has nothing to do."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tiny_workflow import failure, rules_run, snakemake, tiny_config, write_tiny_movielens
from workflow.runs import block, parse

pytestmark = pytest.mark.slow  # a tiny workflow run of its own (make test schedules these first)


@pytest.fixture(scope="module")
def tuning_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("tiny-tuning")
    write_tiny_movielens(tmp / "raw")
    config = tiny_config(tmp, tiny_model_dir)
    config["methods"] = ["base", "sft"]
    config["evaluation"]["protocols"] = ["likelihood"]
    # two trials each: the default settings and one other (sft's lr 5e-4 is the schema's default)
    config["tuning"] = {"trials": 2, "budget": 8, "spaces": {"sft": {"lr": [0.0005, 0.002]}},
                        "sasrec": {"hidden_size": [16, 8]}, "metrics": ["auc", "hr@1"]}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp / "work", tmp / "config.yaml", "results/tuning/tuned.md")
    assert out.returncode == 0, failure(out)
    return tmp, tmp / "work" / "results", out.stdout + out.stderr


def test_trials_on_valid_then_the_selected_on_test(tuning_run):
    tmp, results, log = tuning_run
    ran = rules_run(log)
    assert ran["sasrec_trial"] == 2 and ran["study"] == 1 and ran["tuning_table"] == 1
    assert rules_run(log, "localcheckpoint")["tuning_selection"] == 1
    selected = pd.read_parquet(results / "tuning/selected.parquet")
    assert selected.groupby("method").size().to_dict() == {"sft": 2, "sasrec": 2}
    assert selected.groupby("method")["selected"].sum().to_dict() == {"sft": 1, "sasrec": 1}
    assert selected.loc[selected["is_default"], "run"].tolist() == ["sft-open", "hidden_size16"]
    # only the default and selected runs were read on the test split
    tested = {p.parts[-4] for p in (results / "tiny/llm").glob("*/random/test/metrics.parquet")}
    chosen = set(selected.loc[selected["selected"] & (selected["method"] == "sft"), "run"])
    assert tested == {"sft-open"} | chosen
    sasrec_tested = {p.parent.parent.name for p in (results / "tiny/tuning/sasrec").glob("*/s*/test.parquet")}
    assert sasrec_tested == set(selected.loc[(selected["method"] == "sasrec")
                                             & (selected["selected"] | selected["is_default"]), "run"])
    for trial in (results / "tiny/tuning/sasrec").glob("*/s*/valid.parquet"):
        assert set(pd.read_parquet(trial)["split"]) == {"valid"}
    table = (results / "tuning/tuned.md").read_text()
    assert "## Test split" in table and "| tiny | random | sft | auc |" in table and "| tiny | random | sasrec | auc |" in table
    assert "Claims left out (a side not among the tuned methods, or without its runs): dmpo > sft, " in table


def test_the_overlay_reruns_the_selected_settings(tuning_run):
    tmp, results, _ = tuning_run
    overlay = yaml.safe_load((results / "tuning/tuned.yaml").read_text())
    selected = pd.read_parquet(results / "tuning/selected.parquet")
    best = selected[selected["selected"]].set_index("method")
    assert overlay["methods"] == ["base", best.loc["sft", "run"]]
    assert overlay["surrogate"] == yaml.safe_load(best.loc["sasrec", "settings"])
    config = yaml.safe_load((tmp / "config.yaml").read_text())
    lr = block(parse(best.loc["sft", "run"]), {**config, "sft": {**config["sft"], "lr": 0.0005}})["lr"]
    assert lr == yaml.safe_load(best.loc["sft", "settings"])["lr"]


def test_the_tuned_table_is_a_page_of_the_report(tuning_run):
    tmp, results, _ = tuning_run
    out = snakemake(tmp / "work", tmp / "config.yaml", "results/report/tables/tuning/tuned.html")
    assert out.returncode == 0, failure(out)
    assert rules_run(out.stdout + out.stderr) == {"report_page": 1}  # nothing else ran for it
    page = (results / "report/tables/tuning/tuned.html").read_text()
    tables = (results / "tuning/tuned.md").read_text().count("\n|---")
    assert tables >= 2 and page.count("<table>") == tables
    assert "<td>tiny</td><td>random</td><td>sft</td><td>auc</td>" in page.replace("\n", "")


def test_a_rerun_has_nothing_to_do(tuning_run):
    tmp, _, _ = tuning_run
    out = snakemake(tmp / "work", tmp / "config.yaml", "-n", "results/tuning/tuned.md")
    assert out.returncode == 0, failure(out)
    assert "Nothing to be done" in out.stdout + out.stderr


def test_a_changed_setting_plans_its_jobs_again(tuning_run):
    """A method block's setting reaches its jobs' recorded params (the --spec, a function of the
    wildcards alone), so changing it plans those jobs again, not a stale result."""
    tmp, _, _ = tuning_run
    config = yaml.safe_load((tmp / "config.yaml").read_text())
    config["sft"]["warmup_ratio"] = 0.5
    (tmp / "changed.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp / "work", tmp / "changed.yaml", "-n", "results/tuning/tuned.md")
    assert out.returncode == 0, failure(out)
    assert rules_run(out.stdout, "rule")["sft"] == 2 and "Params have changed" in out.stdout
