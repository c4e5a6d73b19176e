"""The collapse study: per-(method, k) statistics, paired differences against the smallest k, the
markdown table and the plot, from per-sample metrics files as the evaluation writes them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow import collapse
from workflow.io import read_provenance


def metrics_file(path, method, hr1, ndcg=None, selection="random", dataset="toy"):
    ids = [f"s{i}" for i in range(len(hr1))]
    rows = [pd.DataFrame({"dataset": dataset, "method": method, "selection": selection, "protocol": "likelihood",
                          "split": "test", "sample_id": ids, "user_id": [f"u{i}" for i in range(len(hr1))],
                          "metric": metric, "value": np.asarray(values, dtype=float)})
            for metric, values in (("hr@1", hr1), ("ndcg@10", ndcg if ndcg is not None else hr1))]
    # a valid-split row and another protocol must not leak into the study
    rows.append(rows[0].assign(split="valid", value=1.0))
    rows.append(rows[0].assign(protocol="generation", metric="hit", value=1.0))
    pd.concat(rows, ignore_index=True).to_parquet(path)
    return str(path)


@pytest.fixture()
def runs(tmp_path):
    return [
        ("dmpo", 1, metrics_file(tmp_path / "d1.parquet", "dmpo-k1", [1, 1, 1, 0, 1, 0])),
        ("dmpo", 3, metrics_file(tmp_path / "d3.parquet", "dmpo", [1, 0, 1, 0, 0, 0])),  # the reused main run
        ("dmpo", 15, metrics_file(tmp_path / "d15.parquet", "dmpo-k15", [0, 0, 0, 0, 1, 0])),
        ("dynamicpo", 1, metrics_file(tmp_path / "y1.parquet", "dynamicpo-k1", [1, 0, 1, 0, 1, 0])),
        ("dynamicpo", 15, metrics_file(tmp_path / "y15.parquet", "dynamicpo-k15", [1, 0, 1, 1, 1, 0])),
    ]


def pick(table, method, k, metric="hr@1"):
    sel = table[(table["method"] == method) & (table["k"] == k) & (table["metric"] == metric)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_values_and_paired_deltas_match_hand_computation(runs):
    table = collapse.collapse_table(runs, resamples=300, level=0.95, seed=3)
    assert len(table) == 10  # 5 runs x (hr@1, ndcg@10)
    assert pick(table, "dmpo", 1)["value"] == pytest.approx(4 / 6)
    assert pick(table, "dmpo", 3)["value"] == pytest.approx(2 / 6)
    assert pick(table, "dmpo", 15)["value"] == pytest.approx(1 / 6)
    assert pick(table, "dynamicpo", 15)["value"] == pytest.approx(4 / 6)
    # the smallest k of each method is the baseline of its deltas
    assert np.isnan(pick(table, "dmpo", 1)["delta_vs_smallest_k"])
    assert pick(table, "dmpo", 15)["delta_vs_smallest_k"] == pytest.approx(1 / 6 - 4 / 6)
    assert pick(table, "dynamicpo", 15)["delta_vs_smallest_k"] == pytest.approx(1 / 6)
    for _, r in table.iterrows():
        assert r["n"] == 6
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    d = pick(table, "dmpo", 15)
    assert d["delta_ci_low"] <= d["delta_vs_smallest_k"] <= d["delta_ci_high"]
    # the same seed gives the same intervals
    again = collapse.collapse_table(runs, resamples=300, level=0.95, seed=3)
    pd.testing.assert_frame_equal(table, again)


def test_paired_interval_is_narrower_than_unpaired_when_runs_agree(tmp_path):
    """Two runs that differ on one sample: the paired difference's interval is tight around it."""
    base = [1, 0] * 20
    moved = list(base)
    moved[1] = 1
    runs = [("dmpo", 1, metrics_file(tmp_path / "a.parquet", "dmpo-k1", base)),
            ("dmpo", 7, metrics_file(tmp_path / "b.parquet", "dmpo-k7", moved))]
    r = pick(collapse.collapse_table(runs, resamples=500, level=0.95, seed=0), "dmpo", 7)
    assert r["delta_vs_smallest_k"] == pytest.approx(1 / 40)
    # resampled, the difference is (copies of that one sample) / 40: never negative, and far tighter
    # than either run's own interval (each alone is as uncertain as a coin)
    assert r["delta_ci_low"] >= 0
    assert r["ci_high"] - r["ci_low"] > 0.2
    assert r["delta_ci_high"] - r["delta_ci_low"] < (r["ci_high"] - r["ci_low"]) / 2


def test_cli_writes_table_markdown_and_plot(runs, tmp_path):
    sft = metrics_file(tmp_path / "sft.parquet", "sft", [1, 0, 0, 0, 1, 0])
    out = tmp_path / "out"
    argv = [a for m, k, p in runs for a in ("--run", m, str(k), p)]
    code = collapse.main(argv + ["--reference", sft, "--spec", '{"bootstrap": 100, "ci": 0.9}', "--seed", "1",
                                 "--out-parquet", str(out / "c.parquet"), "--out-md", str(out / "c.md"),
                                 "--out-png", str(out / "c.png")])
    assert code == 0
    table = pd.read_parquet(out / "c.parquet")
    assert set(table["method"]) == {"dmpo", "dynamicpo"} and sorted(set(table["k"])) == [1, 3, 15]
    assert read_provenance(out / "c.parquet")["seed"] == 1
    md = (out / "c.md").read_text()
    assert "| method | k=1 | k=3 | k=15 |" in md
    assert "| dynamicpo | 0.500" in md and "| –" not in md.split("dynamicpo")[0]  # dmpo row is complete
    assert "–" in md.split("| dynamicpo |")[1].splitlines()[0]  # dynamicpo has no k=3 run
    assert (out / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temp file behind


def test_cli_rejects_bad_k_and_files_without_likelihood_rows(runs, tmp_path):
    out = ["--spec", '{"bootstrap": 10, "ci": 0.9}', "--seed", "1", "--out-parquet", str(tmp_path / "c.parquet"),
            "--out-md", str(tmp_path / "c.md"), "--out-png", str(tmp_path / "c.png")]
    assert collapse.main(["--run", "dmpo", "zero", runs[0][2]] + out) == 1
    empty = tmp_path / "gen.parquet"
    frame = pd.read_parquet(runs[0][2])
    frame[frame["protocol"] == "generation"].to_parquet(empty)
    with pytest.raises(ValueError, match="gen.parquet: no likelihood rows"):
        collapse.collapse_table([("dmpo", 1, str(empty))], 10, 0.9, 0)
    assert not (tmp_path / "c.parquet").exists()
