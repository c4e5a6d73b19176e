"""Studies through Snakemake on a copy of the shared tiny run: only the runs the main DAG lacks train
and evaluate (likelihood only, on the study's split); a main run at a grid point is reused."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from tiny_workflow import failure, rules_run, snakemake

pytestmark = pytest.mark.slow


def test_collapse_and_learning_curve_train_only_the_missing_runs(tiny_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(tiny_run.workdir, work, symlinks=True)
    config = yaml.safe_load(tiny_run.configfile.read_text())
    assert config["dmpo"]["k"] == 2 and config["selection"]["budget"] == 8
    config["studies"] = {
        "collapse": {"enabled": True, "methods": ["dmpo"], "grid": {"k": [1, 2]}, "x": "k"},
        "learning_curve": {"enabled": True, "methods": ["sft", "dmpo"], "grid": {"budget": [4, 8]},
                           "x": "budget", "split": "valid", "metrics": ["hr@1", "auc"]},
    }
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))

    out = snakemake(work, configfile)
    assert out.returncode == 0, failure(out)
    ran = rules_run(out.stdout + out.stderr)
    # collapse: dmpo-open-k1 (k=2 is the main dmpo-open run), evaluated on test;
    # learning curve: sft-open-n4, its reference log-probs and dmpo-open-n4 (n=8 is the whole
    # selection: the main runs), all four evaluated on the validation split;
    # each study's table as a page of the report, and the report's resource table, which lists every
    # benchmark file
    assert ran == {"preference": 2, "sft": 1, "reference_logprobs": 1, "evaluate": 5, "study": 2,
                   "report_page": 2, "report_resources": 1}, ran

    results = work / "results"
    page = (results / "report/tables/studies/collapse.html").read_text()
    assert page.count("<table>") == (results / "studies/collapse.md").read_text().count("\n|---") > 0
    collapse = pd.read_parquet(results / "studies/collapse.parquet")
    hr1 = collapse[collapse["metric"] == "hr@1"].set_index("k")
    assert sorted(hr1.index) == [1, 2] and set(hr1["method"]) == {"dmpo"}
    # k=2 is the main dmpo-open run's likelihood hr@1, per sample the same numbers
    main = pd.read_parquet(results / "tiny/llm/dmpo-open/random/test/metrics.parquet")
    main_hr1 = main[(main["protocol"] == "likelihood") & (main["metric"] == "hr@1")]
    assert hr1.loc[2, "value"] == pytest.approx(main_hr1["value"].mean())
    assert hr1.loc[2, "n"] == len(main_hr1)
    extra = pd.read_parquet(results / "tiny/llm/dmpo-open-k1/random/test/metrics.parquet")
    assert set(extra["protocol"]) == {"likelihood", "likelihood_norm"} and set(extra["method"]) == {"dmpo-open-k1"}
    training = (results / "tiny/llm/dmpo-open-k1/random/adapter/training_config.json").read_text()
    assert '"k": 1' in training

    curve = pd.read_parquet(results / "studies/learning_curve.parquet")
    samples = pd.read_parquet(results / "tiny/data/samples.parquet")
    assert set(curve["n"]) == {int((samples["split"] == "valid").sum())}
    assert sorted(curve["budget"].unique()) == [4, 8] and set(curve["method"]) == {"sft", "dmpo"}
    assert curve.loc[curve["budget"] == 8, "delta"].notna().all()
    valid = pd.read_parquet(results / "tiny/llm/sft-open-n4/random/valid/metrics.parquet")
    assert set(valid["split"]) == {"valid"}
    md = (results / "studies/learning_curve.md").read_text()
    assert "budget=4" in md and "Baselines: random" in md and "popularity" in md and "sasrec" in md
    for name in ("collapse", "learning_curve"):
        assert (results / f"studies/{name}.png").read_bytes()[:4] == b"\x89PNG"
