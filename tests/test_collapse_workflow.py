"""The collapse study through Snakemake on a copy of the shared tiny run: only the extra (method, k)
runs train and evaluate (likelihood only); a main run whose k matches is reused, not retrained."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from tiny_workflow import failure, rules_run, snakemake

pytestmark = pytest.mark.slow


def test_collapse_study_trains_only_the_missing_ks(tiny_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(tiny_run.workdir, work, symlinks=True)
    config = yaml.safe_load(tiny_run.configfile.read_text())
    assert config["dmpo"]["k"] == 2
    config["collapse"] = {"enabled": True, "methods": ["dmpo"], "ks": [1, 2]}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))

    out = snakemake(work, configfile)
    assert out.returncode == 0, failure(out)
    ran = rules_run(out.stdout + out.stderr)
    # dmpo at k=1 is new; k=2 is the main dmpo run; nothing else reruns
    # (and the report's resource table, which lists every benchmark file, the new ones too)
    assert ran == {"preference": 1, "evaluate": 1, "collapse_study": 1, "report_resources": 1}, ran

    results = work / "results"
    table = pd.read_parquet(results / "collapse/collapse.parquet")
    hr1 = table[table["metric"] == "hr@1"].set_index("k")
    assert sorted(hr1.index) == [1, 2] and set(hr1["method"]) == {"dmpo"}
    # k=2 is the main dmpo run's likelihood hr@1, per sample the same numbers
    main = pd.read_parquet(results / "tiny/llm/dmpo/random/metrics.parquet")
    main_hr1 = main[(main["protocol"] == "likelihood") & (main["metric"] == "hr@1") & (main["split"] == "test")]
    assert hr1.loc[2, "value"] == pytest.approx(main_hr1["value"].mean())
    assert hr1.loc[2, "n"] == len(main_hr1)
    # the extra run is evaluated with the study's protocols only (likelihood)
    extra = pd.read_parquet(results / "tiny/llm/dmpo-k1/random/metrics.parquet")
    assert set(extra["protocol"]) == {"likelihood", "likelihood_norm"} and set(extra["method"]) == {"dmpo-k1"}
    training = (results / "tiny/llm/dmpo-k1/random/adapter/training_config.json").read_text()
    assert '"k": 1' in training
    assert (results / "collapse/collapse.png").read_bytes()[:4] == b"\x89PNG"
    assert "| dmpo | " in (results / "collapse/collapse.md").read_text()
