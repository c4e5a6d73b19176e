"""Studies (workflow/study.py): per-run statistics, paired differences against the smallest x of each
series, the markdown table and the plot, from per-sample metrics files as the evaluation writes
them; the collapse study (x = k) and a learning curve (x = budget, on the validation split)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import json

from workflow import study
from workflow.io import read_provenance


def metrics_file(path, method, hr1, ndcg=None, selection="random", dataset="toy", split="test", grounded=None,
                 protocol="likelihood"):
    """A run's per-sample metrics: hr@1 and ndcg@10 of `protocol`, and with `grounded` the grounded
    protocol's hr@1 and hr@10 (both `grounded`)."""
    ids = [f"s{i}" for i in range(len(hr1))]
    rows = [pd.DataFrame({"dataset": dataset, "method": method, "selection": selection, "protocol": protocol,
                          "split": split, "sample_id": ids, "user_id": [f"u{i}" for i in range(len(hr1))],
                          "metric": metric, "value": np.asarray(values, dtype=float)})
            for metric, values in (("hr@1", hr1), ("ndcg@10", ndcg if ndcg is not None else hr1))]
    # another split's rows and another protocol must not leak into the study
    rows.append(rows[0].assign(split="valid" if split == "test" else "test", value=1.0))
    rows.append(rows[0].assign(protocol="generation", metric="hit", value=1.0))
    if grounded is not None:
        rows += [rows[0].assign(protocol="grounded", metric=metric, value=np.asarray(grounded, dtype=float))
                 for metric in ("hr@1", "hr@10")]
    pd.concat(rows, ignore_index=True).to_parquet(path)
    return str(path)


def run(method, k, path):
    return {"dataset": "toy", "selection": "random", "method": method, "prompt": "open", "k": k, "epochs": 1,
            "budget": 64, "path": path}


@pytest.fixture()
def runs(tmp_path):
    return [
        run("dmpo", 1, metrics_file(tmp_path / "d1.parquet", "dmpo-open-k1", [1, 1, 1, 0, 1, 0])),
        run("dmpo", 3, metrics_file(tmp_path / "d3.parquet", "dmpo-open", [1, 0, 1, 0, 0, 0])),  # the reused main run
        run("dmpo", 15, metrics_file(tmp_path / "d15.parquet", "dmpo-open-k15", [0, 0, 0, 0, 1, 0])),
        run("dynamicpo", 1, metrics_file(tmp_path / "y1.parquet", "dynamicpo-open-k1", [1, 0, 1, 0, 1, 0])),
        run("dynamicpo", 15, metrics_file(tmp_path / "y15.parquet", "dynamicpo-open-k15", [1, 0, 1, 1, 1, 0])),
    ]


def table_of(runs, resamples=300, seed=3, x="k", split="test"):
    return study.study_table(runs, x, split, ["hr@1", "ndcg@10"], resamples, 0.95, seed)


def pick(table, method, k, metric="hr@1"):
    sel = table[(table["method"] == method) & (table["k"] == k) & (table["metric"] == metric)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_values_and_paired_deltas_match_hand_computation(runs):
    table = table_of(runs)
    assert len(table) == 10  # 5 runs x (hr@1, ndcg@10)
    assert pick(table, "dmpo", 1)["value"] == pytest.approx(4 / 6)
    assert pick(table, "dmpo", 3)["value"] == pytest.approx(2 / 6)
    assert pick(table, "dmpo", 15)["value"] == pytest.approx(1 / 6)
    assert pick(table, "dynamicpo", 15)["value"] == pytest.approx(4 / 6)
    # the smallest k of each method is the baseline of its deltas
    assert np.isnan(pick(table, "dmpo", 1)["delta"])
    assert pick(table, "dmpo", 15)["delta"] == pytest.approx(1 / 6 - 4 / 6)
    assert pick(table, "dynamicpo", 15)["delta"] == pytest.approx(1 / 6)
    for _, r in table.iterrows():
        assert r["n"] == 6
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    d = pick(table, "dmpo", 15)
    assert d["delta_ci_low"] <= d["delta"] <= d["delta_ci_high"]
    # the same seed gives the same intervals
    again = table_of(runs)
    pd.testing.assert_frame_equal(table, again)


def test_paired_interval_is_narrower_than_unpaired_when_runs_agree(tmp_path):
    """Two runs that differ on one sample: the paired difference's interval is tight around it."""
    base = [1, 0] * 20
    moved = list(base)
    moved[1] = 1
    runs = [run("dmpo", 1, metrics_file(tmp_path / "a.parquet", "dmpo-open-k1", base)),
            run("dmpo", 7, metrics_file(tmp_path / "b.parquet", "dmpo-open-k7", moved))]
    r = pick(table_of(runs, resamples=500, seed=0), "dmpo", 7)
    assert r["delta"] == pytest.approx(1 / 40)
    # resampled, the difference is (copies of that one sample) / 40: never negative, and far tighter
    # than either run's own interval (each alone is as uncertain as a coin)
    assert r["delta_ci_low"] >= 0
    assert r["ci_high"] - r["ci_low"] > 0.2
    assert r["delta_ci_high"] - r["delta_ci_low"] < (r["ci_high"] - r["ci_low"]) / 2


def test_learning_curve_series_and_validation_split(tmp_path):
    """x = budget: one series per (method, prompt, epochs); deltas against each series' smallest
    budget; only the study's split is read."""
    def point(method, prompt, budget, epochs, hr1):
        name = f"{method}-{prompt}-e{epochs}-n{budget}"
        path = metrics_file(tmp_path / f"{name}.parquet", name, hr1, split="valid")
        return {"dataset": "toy", "selection": "random", "method": method, "prompt": prompt, "k": None,
                "epochs": epochs, "budget": budget, "path": path}

    runs = [point("sft", "open", 128, 1, [0, 0, 1, 0]), point("sft", "open", 512, 1, [1, 0, 1, 1]),
            point("sft", "open", 128, 3, [1, 1, 1, 0]), point("sft", "open", 512, 3, [1, 1, 1, 1]),
            point("sft", "candidate", 128, 1, [0, 0, 0, 0]), point("sft", "candidate", 512, 1, [0, 1, 0, 0])]
    table = study.study_table(runs, "budget", "valid", ["hr@1"], 200, 0.9, 0)
    assert len(table) == 6 and (table["n"] == 4).all()
    row = table[(table["prompt"] == "open") & (table["epochs"] == 3) & (table["budget"] == 512)].iloc[0]
    assert row["value"] == 1.0 and row["delta"] == pytest.approx(1 - 3 / 4)
    row = table[(table["prompt"] == "candidate") & (table["budget"] == 512)].iloc[0]
    assert row["delta"] == pytest.approx(1 / 4)
    assert table.loc[table["budget"] == 128, "delta"].isna().all()
    # the files' test rows (all 1.0, see metrics_file) are another split: read only when asked for
    assert (study.study_table(runs, "budget", "test", ["hr@1"], 10, 0.9, 0)["value"] == 1.0).all()


def test_cli_writes_table_markdown_and_plot(runs, tmp_path):
    base = metrics_file(tmp_path / "base.parquet", "popularity", [1, 0, 0, 0, 1, 0], selection="all")
    out = tmp_path / "out"
    spec = {"name": "collapse", "x": "k", "split": "test", "protocols": ["likelihood"], "metrics": ["hr@1", "ndcg@10"],
            "bootstrap": 100, "ci": 0.9, "runs": runs}
    code = study.main(["--spec", json.dumps(spec), "--baselines", base, "--seed", "1",
                       "--out-parquet", str(out / "c.parquet"), "--out-md", str(out / "c.md"),
                       "--out-png", str(out / "c.png")])
    assert code == 0
    table = pd.read_parquet(out / "c.parquet")
    assert set(table["method"]) == {"dmpo", "dynamicpo"} and sorted(set(table["k"])) == [1, 3, 15]
    assert read_provenance(out / "c.parquet")["seed"] == 1
    md = (out / "c.md").read_text()
    assert "| run | k=1 | k=3 | k=15 |" in md
    assert "| dynamicpo open e1 n64 | 0.500" in md
    assert "| –" not in md.split("| dynamicpo")[0]  # the dmpo row is complete
    assert "–" in md.split("| dynamicpo open e1 n64 |")[1].splitlines()[0]  # dynamicpo has no k=3 run
    assert "Baselines: popularity 0.333" in md
    assert (out / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temp file behind


def test_cli_rejects_a_bad_spec_and_files_without_likelihood_rows(runs, tmp_path):
    out = ["--seed", "1", "--out-parquet", str(tmp_path / "c.parquet"),
           "--out-md", str(tmp_path / "c.md"), "--out-png", str(tmp_path / "c.png")]
    spec = {"name": "collapse", "x": "k", "split": "test", "protocols": ["likelihood"], "metrics": ["hr@1"],
            "bootstrap": 10, "ci": 0.9}
    assert study.main(["--spec", json.dumps(spec)] + out) == 1  # no runs
    assert study.main(["--spec", json.dumps({**spec, "runs": runs, "x": "temperature"})] + out) == 1
    empty = tmp_path / "gen.parquet"
    frame = pd.read_parquet(runs[0]["path"])
    frame[frame["protocol"] == "generation"].to_parquet(empty)
    with pytest.raises(ValueError, match=r"gen.parquet: no rows of the protocols \['likelihood'\]"):
        table_of([{**runs[0], "path": str(empty)}], 10)
    assert not (tmp_path / "c.parquet").exists()


def test_differences_against_a_reference_method(tmp_path):
    """A study with `reference` (iLoRA's experts against LLaRA): every run's delta is against the
    reference run, which is listed under the table and is not a series."""
    def expert_run(n, hr1):
        return {"dataset": "toy", "selection": "random", "method": "ilora", "prompt": "open", "k": None,
                "epochs": 1, "budget": 64, "n_experts": n, "gate": "sequence", "alpha": None,
                "path": metrics_file(tmp_path / f"i{n}.parquet", f"ilora-open-x{n}", hr1)}

    reference = {"dataset": "toy", "selection": "random", "method": "llara", "prompt": "open", "k": None,
                 "epochs": 1, "budget": 64, "n_experts": None, "gate": None, "alpha": None, "reference": True,
                 "path": metrics_file(tmp_path / "llara.parquet", "llara-open", [1, 0, 0, 0, 1, 0])}
    runs = [expert_run(1, [1, 0, 0, 0, 0, 0]), expert_run(4, [1, 1, 1, 0, 1, 0]), reference]
    table = study.study_table(runs, "n_experts", "test", ["hr@1"], 300, 0.95, 3)
    experts = table[~table["is_reference"]].set_index("n_experts")
    assert experts.loc[1, "delta"] == pytest.approx(1 / 6 - 2 / 6)
    assert experts.loc[4, "delta"] == pytest.approx(4 / 6 - 2 / 6)
    assert table.loc[table["is_reference"], "delta"].isna().all()
    md = study.markdown("experts", table, pd.DataFrame(columns=["dataset", "protocol", "metric"]), "n_experts",
                        "test", 300, 0.95)
    assert "Reference: llara open" in md and "against the reference run" in md
    assert "| ilora open" in md and "n_experts=4" in md


def test_every_protocol_of_the_study_gets_its_rows_deltas_baselines_and_panels(tmp_path):
    """protocols [likelihood, grounded] (SOFT's alpha against sft): one row per run, protocol and
    metric, each delta against the reference run under the same protocol; a metric a protocol lacks
    (ndcg@10 under grounded here) is left out; the baselines' all-item ranking (full_ranking) is
    grounded's line, their candidate ranking likelihood's, each on the samples the runs were scored on."""
    def alpha_run(alpha, hr1, grounded, reference=False):
        method = "sft" if reference else "soft"
        return {"dataset": "toy", "selection": "random", "method": method, "prompt": "open", "budget": 64,
                "alpha": None if reference else alpha, "reference": reference,
                "path": metrics_file(tmp_path / f"{method}{alpha}.parquet", method, hr1, grounded=grounded)}

    runs = [alpha_run(0.1, [1, 1, 0, 0], [0, 1, 0, 0]), alpha_run(10, [1, 0, 0, 0], [1, 1, 1, 0]),
            alpha_run(None, [0, 1, 0, 0], [0, 0, 0, 0], reference=True)]
    protocols = ["likelihood", "grounded"]
    table = study.study_table(runs, "alpha", "test", ["hr@1", "ndcg@10", "hr@10"], 200, 0.9, 0, protocols)
    # 3 runs x (likelihood: hr@1, ndcg@10; grounded: hr@1, hr@10)
    assert len(table) == 12
    assert list(dict.fromkeys(table["protocol"])) == protocols
    assert set(table.loc[table["protocol"] == "grounded", "metric"]) == {"hr@1", "hr@10"}

    def row(alpha, protocol, metric):
        sel = table[(table["alpha"] == alpha) & (table["protocol"] == protocol) & (table["metric"] == metric)]
        assert len(sel) == 1, sel
        return sel.iloc[0]

    assert row(0.1, "likelihood", "hr@1")["delta"] == pytest.approx(2 / 4 - 1 / 4)
    assert row(10, "likelihood", "hr@1")["delta"] == pytest.approx(1 / 4 - 1 / 4)
    assert row(0.1, "grounded", "hr@1")["delta"] == pytest.approx(1 / 4 - 0)
    assert row(10, "grounded", "hr@10")["value"] == pytest.approx(3 / 4)
    assert row(10, "grounded", "hr@10")["delta"] == pytest.approx(3 / 4 - 0)

    # popularity on 6 samples, 2 of which (s4, s5: hits in both rankings) no run was scored on
    popularity = metrics_file(tmp_path / "pop.parquet", "popularity", [1, 0, 0, 0, 1, 1], selection="all")
    frame = pd.read_parquet(popularity)
    likelihood = frame[frame["protocol"] == "likelihood"]
    ranking = likelihood.assign(protocol="full_ranking", value=likelihood["sample_id"].isin(["s4", "s5"]) * 1.0)
    pd.concat([frame, ranking]).to_parquet(popularity)
    everything = study.baseline_values([popularity], "test", ["hr@1", "hr@10"], 50, 0.9, 0, protocols)
    values = everything.set_index(["protocol", "metric"])["value"]
    assert values[("likelihood", "hr@1")] == pytest.approx(3 / 6) and values[("grounded", "hr@1")] == pytest.approx(2 / 6)
    scored = study.evaluated_samples(study.run_frames(runs, "test", protocols, ["hr@1", "hr@10"]))
    assert sorted(scored[("toy", "grounded")]) == ["s0", "s1", "s2", "s3"]
    baselines = study.baseline_values([popularity], "test", ["hr@1", "hr@10"], 50, 0.9, 0, protocols, scored)
    values = baselines.set_index(["protocol", "metric"])["value"]
    assert values[("likelihood", "hr@1")] == pytest.approx(1 / 4) and values[("grounded", "hr@1")] == 0.0

    md = study.markdown("alpha", table, baselines, "alpha", "test", 200, 0.9)
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections == ["## toy, selection random: likelihood hr@1 (n = 4)",
                        "## toy, selection random: likelihood ndcg@10 (n = 4)",
                        "## toy, selection random: grounded hr@1 (n = 4)",
                        "## toy, selection random: grounded hr@10 (n = 4)"]
    grounded_hr1 = md.split("grounded hr@1")[1].split("##")[0]
    assert "Baselines: popularity 0.000" in grounded_hr1 and "Reference: sft open" in grounded_hr1
    out = tmp_path / "alpha.png"
    study.plot(table, baselines, "alpha", out)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_seeds_are_pooled_and_training_costs_reported(tmp_path):
    """Two seeds of each run: per-sample values averaged over the seeds, then the statistic and the
    paired difference against the reference (sft at the same budget) by hand; the training jobs'
    mean seconds and memory from their benchmark records."""
    def bench(name, seconds, rss):  # Snakemake's benchmark columns; CPU time: 0.8 of the wall time
        path = tmp_path / f"{name}.tsv"
        path.write_text("s\th:m:s\tmax_rss\tmax_vms\tcpu_time\n" f"{seconds}\t0:00:01\t{rss}\t1\t{0.8 * seconds}\n")
        return str(path)

    def seeded(method, seed, hr1, seconds, rss, reference=False):
        labels = {"dataset": "toy", "selection": "random", "method": method, "prompt": "open", "k": None,
                  "epochs": 1, "budget": 64, "seed": seed,
                  "path": metrics_file(tmp_path / f"{method}{seed}.parquet", method, hr1),
                  "benchmark": bench(f"{method}{seed}", seconds, rss)}
        return {**labels, "reference": True} if reference else labels

    runs = [seeded("napo", 1, [1, 1, 0, 0], 100, 900), seeded("napo", 2, [1, 0, 0, 1], 140, 1100),
            seeded("sft", 1, [0, 1, 0, 0], 50, 800, True), seeded("sft", 2, [0, 0, 0, 1], 70, 800, True)]
    table = study.with_costs(study.study_table(runs, "budget", "test", ["hr@1"], 200, 0.9, 0), runs)
    napo = table[(table["method"] == "napo") & (table["metric"] == "hr@1")].iloc[0]
    assert napo["value"] == pytest.approx(np.mean([1, 0.5, 0, 0.5]))  # (seed 1 + seed 2) / 2 per sample
    assert napo["delta"] == pytest.approx(np.mean([1, 0.5, 0, 0.5]) - np.mean([0, 0.5, 0, 0.5]))
    assert napo["n_seeds"] == 2 and napo["train_seconds"] == 120 and napo["train_max_rss_mb"] == 1000
    assert napo["train_cpu_seconds"] == pytest.approx(96)
    md = study.markdown("objectives", table, pd.DataFrame(columns=["dataset", "protocol", "metric"]), "budget",
                        "test", 200, 0.9)
    assert "Pooled over 2 training seeds" in md and "| napo open e1 n64 | 120 | 96 | 1000 |" in md


def test_series_labels_spell_values_as_run_names():
    """A series label is its run's name but the x axis (the learning rate `lr5e-4`, not `lr0.0005`; an
    int axis of a column with gaps, stored as floats, without a decimal point)."""
    from workflow.runs import GRID_AXES, Run

    row = pd.Series({a.name: None for a in GRID_AXES} | {"method": "dmpo", "prompt": "open", "k": 7.0, "beta": 0.1,
                                                          "lr": 0.0005, "epochs": 2.0, "budget": 256.0})
    assert study.series_label(row, "k") == "dmpo open b0.1 lr5e-4 e2 n256"
    run = Run("dmpo", "open", k=7, beta=0.1, lr=0.0005, epochs=2, budget=256)
    assert "-".join(study.series_label(row, "").split(" ")) == run.name
