"""Summary table: hand-computed statistics, bootstrap intervals, paired comparisons against sft, base
and popularity."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow import summary
from workflow.io import read_provenance


def long_rows(method, selection, protocol, metric, values, users=None, dataset="toy", split="test", ids=None):
    ids = ids if ids is not None else [f"s{i}" for i in range(len(values))]
    users = users if users is not None else [f"u{i}" for i in range(len(values))]
    return pd.DataFrame({
        "dataset": dataset, "method": method, "selection": selection, "protocol": protocol, "split": split,
        "sample_id": ids, "user_id": users, "metric": metric, "value": np.asarray(values, dtype=float),
    })


def row(table, method, protocol, metric, selection=None):
    sel = table[(table["method"] == method) & (table["protocol"] == protocol) & (table["metric"] == metric)]
    if selection is not None:
        sel = sel[sel["selection"] == selection]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_means_and_n_match_hand_computation():
    metrics = pd.concat([
        long_rows("base", "none", "likelihood", "hr@1", [1, 0, 0, 1]),
        long_rows("base", "none", "likelihood", "mrr", [1, 0.5, 0.25, 1]),
        long_rows("sft", "random", "likelihood", "hr@1", [1, 1, 0, 1]),
        long_rows("sft", "random", "likelihood", "hr@1", [0, 0], split="valid"),  # not summarised
    ])
    table = summary.summarize(metrics, resamples=200, level=0.95, seed=0)
    assert len(table) == 3
    assert row(table, "base", "likelihood", "hr@1")["value"] == pytest.approx(0.5)
    assert row(table, "base", "likelihood", "mrr")["value"] == pytest.approx(2.75 / 4)
    assert row(table, "sft", "likelihood", "hr@1")["value"] == pytest.approx(0.75)
    assert row(table, "sft", "likelihood", "hr@1")["n"] == 4


def test_bootstrap_weights_are_draws_with_replacement():
    w = summary.bootstrap_weights(7, 50, seed=3)
    assert w.shape == (50, 7)
    assert np.all(w.sum(axis=1) == 7)
    assert np.all(w >= 0) and w.max() > 1


def test_interval_contains_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 500):
        values = (rng.random(n) < 0.3).astype(float)
        table = summary.summarize(long_rows("base", "none", "likelihood", "hr@1", values), 500, 0.95, seed=1)
        r = row(table, "base", "likelihood", "hr@1")
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert r["ci_low"] < r["ci_high"]
        widths.append(r["ci_high"] - r["ci_low"])
    assert widths[1] < widths[0] / 2


def test_bootstrap_is_reproducible_given_the_seed():
    values = np.random.default_rng(5).random(40)
    metrics = long_rows("base", "none", "likelihood", "ndcg@5", values)
    a = summary.summarize(metrics, 300, 0.95, seed=7)
    b = summary.summarize(metrics.sample(frac=1, random_state=1), 300, 0.95, seed=7)  # row order irrelevant
    c = summary.summarize(metrics, 300, 0.95, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert a["ci_low"].iloc[0] != c["ci_low"].iloc[0]


def test_paired_difference_equals_difference_of_means():
    rng = np.random.default_rng(2)
    base = rng.random(60)
    sft = np.clip(base + 0.1 + 0.02 * rng.standard_normal(60), 0, 1)
    metrics = pd.concat([
        long_rows("base-open", "none", "likelihood", "ndcg@10", base),
        long_rows("sft-open", "random", "likelihood", "ndcg@10", sft),
    ])
    table = summary.summarize(metrics, 500, 0.95, seed=0)
    b = row(table, "base-open", "likelihood", "ndcg@10")
    assert b["sft_selection"] == "random"
    assert b["delta_vs_sft"] == pytest.approx(base.mean() - sft.mean())
    assert b["delta_vs_sft_ci_low"] <= b["delta_vs_sft"] <= b["delta_vs_sft_ci_high"]
    # Pairing removes the between-sample spread: the difference is resolved far more tightly than
    # either mean, and its interval lies below zero.
    assert b["delta_vs_sft_ci_high"] < 0
    assert (b["delta_vs_sft_ci_high"] - b["delta_vs_sft_ci_low"]) < (b["ci_high"] - b["ci_low"]) / 3
    s = row(table, "sft-open", "likelihood", "ndcg@10")
    assert np.isnan(s["delta_vs_sft"]) and pd.isna(s["sft_selection"])
    assert s["base_selection"] == "none"
    assert s["delta_vs_base"] == pytest.approx(sft.mean() - base.mean())


def test_paired_difference_uses_common_samples_only():
    metrics = pd.concat([
        long_rows("base-candidate", "none", "generation", "valid", [1, 0, 1], ids=["a", "b", "c"]),
        long_rows("sft-candidate", "random", "generation", "valid", [1, 1, 0, 0], ids=["b", "c", "d", "e"]),
    ])
    table = summary.summarize(metrics, 100, 0.95, seed=0)
    # common samples b, c: base (0 + 1) / 2 - sft (1 + 1) / 2
    assert row(table, "base-candidate", "generation", "valid")["delta_vs_sft"] == pytest.approx(-0.5)


def test_hr1_over_valid_is_a_ratio_of_sums():
    valid = [1, 1, 0, 1, 0, 1]
    hit = [1, 0, 0, 1, 0, 0]
    metrics = pd.concat([
        long_rows("base", "none", "generation", "valid", valid),
        long_rows("base", "none", "generation", "hit", hit),
    ])
    table = summary.summarize(metrics, 400, 0.95, seed=0)
    assert row(table, "base", "generation", "valid")["value"] == pytest.approx(4 / 6)
    assert row(table, "base", "generation", "hit")["value"] == pytest.approx(2 / 6)
    r = row(table, "base", "generation", "hr@1_valid")
    assert r["value"] == pytest.approx(2 / 4)
    assert r["n"] == 6
    assert 0 <= r["ci_low"] <= 0.5 <= r["ci_high"] <= 1
    assert list(table["metric"]) == ["valid", "hit", "hr@1_valid"]
    none_valid = summary.summarize(metrics.assign(value=0.0), 50, 0.95, seed=0)
    assert list(none_valid["metric"]) == ["valid", "hit"]  # hits / valid is undefined: no row


def test_auc_is_averaged_per_user_first():
    metrics = long_rows("base", "none", "likelihood", "auc", [0.2, 0.4, 1.0], users=["u1", "u1", "u2"])
    table = summary.summarize(metrics, 200, 0.95, seed=0)
    assert row(table, "base", "likelihood", "auc")["value"] == pytest.approx((0.3 + 1.0) / 2)
    # a per-sample metric on the same data is the plain mean
    plain = summary.summarize(metrics.assign(metric="mrr"), 0, 0.95, seed=0)
    assert plain["value"].iloc[0] == pytest.approx(1.6 / 3)
    assert np.isnan(plain["ci_low"].iloc[0])


def test_reference_is_same_selection_else_first_configured():
    metrics = pd.concat([
        long_rows("sft-candidate", "all", "likelihood", "hr@1", [1, 1, 1, 1]),
        long_rows("sft-candidate", "random", "likelihood", "hr@1", [0, 0, 1, 1]),
        long_rows("dmpo-candidate", "all", "likelihood", "hr@1", [0, 0, 0, 0]),
        long_rows("base-candidate", "none", "likelihood", "hr@1", [0, 0, 0, 0]),
    ])
    table = summary.summarize(metrics, 50, 0.95, seed=0, selections=["random", "all"])
    assert row(table, "dmpo-candidate", "likelihood", "hr@1")["sft_selection"] == "all"
    assert row(table, "dmpo-candidate", "likelihood", "hr@1")["delta_vs_sft"] == pytest.approx(-1.0)
    assert row(table, "base-candidate", "likelihood", "hr@1")["sft_selection"] == "random"
    assert row(table, "base-candidate", "likelihood", "hr@1")["delta_vs_sft"] == pytest.approx(-0.5)
    no_order = summary.summarize(metrics, 50, 0.95, seed=0)
    assert row(no_order, "base-candidate", "likelihood", "hr@1")["sft_selection"] == "all"
    # base-P (selection none) is the base reference of every selection of a run
    assert row(table, "sft-candidate", "likelihood", "hr@1", "random")["base_selection"] == "none"
    assert row(table, "sft-candidate", "likelihood", "hr@1", "all")["delta_vs_base"] == pytest.approx(1.0)


def test_cli_writes_parquet_and_markdown(tmp_path):
    rng = np.random.default_rng(0)
    a = pd.concat([
        long_rows("base-open", "none", "likelihood", "hr@1", rng.random(30) < 0.2),
        long_rows("base-open", "none", "grounded", "ndcg@10", rng.random(30)),
    ])
    b = long_rows("sft-open", "random", "likelihood", "hr@1", rng.random(30) < 0.8)
    paths = []
    for name, frame in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.parquet")
        frame.to_parquet(paths[-1])
    out_pq, out_md = tmp_path / "summary.parquet", tmp_path / "summary.md"
    argv = ["--metrics", *map(str, paths), "--spec", '{"bootstrap": 200, "ci": 0.9}', "--seed", "3",
            "--out-parquet", str(out_pq), "--out-md", str(out_md)]
    assert summary.main(argv) == 0
    table = pd.read_parquet(out_pq)
    assert list(table.columns) == summary.SCHEMA.names
    assert len(table) == 3
    assert read_provenance(out_pq)["seed"] == 3
    md = out_md.read_text()
    assert "## toy" in md and "### likelihood (n = 30 test samples)" in md and "### grounded" in md
    assert "| method / selection | hr@1 |" in md and "| method / selection | ndcg@10 |" in md
    assert "| base-open / none |" in md and "| sft-open / random |" in md
    assert "▼" in md  # base is clearly below sft on hr@1
    assert "90% percentile bootstrap" in md


def test_cli_rejects_a_file_without_the_contract_columns(tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"sample_id": ["a"], "value": [1.0]}).to_parquet(bad)
    argv = ["--metrics", str(bad), "--spec", '{"bootstrap": 10, "ci": 0.95}', "--seed", "0",
            "--out-parquet", str(tmp_path / "s.parquet"), "--out-md", str(tmp_path / "s.md")]
    assert summary.main(argv) == 1
    assert not (tmp_path / "s.parquet").exists()
    with pytest.raises(ValueError, match="bad.parquet: missing columns"):
        summary.read_metrics([bad])


@pytest.mark.parametrize("method, prompt", [
    ("sft-open", "open"), ("dmpo-candidate", "candidate"), ("dmpo-open-k7", "open"), ("base-open", "open"),
    ("sasrec", None), ("popularity", None), ("random", None), ("base", None), ("sft-other", None),
])
def test_run_prompt(method, prompt):
    assert summary.run_prompt(method) == prompt


def test_sft_and_base_references_follow_the_prompt():
    metrics = pd.concat([
        long_rows("sft-open", "random", "likelihood", "hr@1", [1, 1, 0, 0]),            # 0.5
        long_rows("sft-candidate", "random", "likelihood", "hr@1", [1, 1, 1, 1]),       # 1.0
        long_rows("base-open", "none", "likelihood", "hr@1", [1, 0, 0, 0]),             # 0.25
        long_rows("base-candidate", "none", "likelihood", "hr@1", [0, 0, 0, 0]),        # 0.0
        long_rows("dmpo-open", "random", "likelihood", "hr@1", [1, 1, 1, 0]),           # 0.75
        long_rows("sft-open-n512", "random", "likelihood", "hr@1", [0, 0, 0, 0]),       # 0.0
    ])
    table = summary.summarize(metrics, 50, 0.95, seed=0)
    dmpo = row(table, "dmpo-open", "likelihood", "hr@1")
    assert dmpo["sft_selection"] == "random" and dmpo["delta_vs_sft"] == pytest.approx(0.75 - 0.5)
    assert dmpo["base_selection"] == "none" and dmpo["delta_vs_base"] == pytest.approx(0.75 - 0.25)
    # an sft variant is compared with the plain sft run of its prompt, the reference itself is not
    assert row(table, "sft-open-n512", "likelihood", "hr@1")["delta_vs_sft"] == pytest.approx(-0.5)
    assert np.isnan(row(table, "sft-open", "likelihood", "hr@1")["delta_vs_sft"])
    assert np.isnan(row(table, "base-open", "likelihood", "hr@1")["delta_vs_base"])
    assert row(table, "base-open", "likelihood", "hr@1")["delta_vs_sft"] == pytest.approx(0.25 - 0.5)
    assert row(table, "sft-candidate", "likelihood", "hr@1")["delta_vs_base"] == pytest.approx(1.0)


def test_rows_without_prompt_have_no_sft_or_base_delta():
    metrics = pd.concat([
        long_rows("sft-candidate", "all", "likelihood", "hr@1", [1, 1, 0, 0]),
        long_rows("base-candidate", "none", "likelihood", "hr@1", [1, 0, 0, 0]),
        long_rows("sasrec", "all", "likelihood", "hr@1", [0, 1, 0, 0]),
        long_rows("popularity", "all", "likelihood", "hr@1", [0, 0, 0, 0]),
    ])
    table = summary.summarize(metrics, 50, 0.95, seed=0)
    sasrec = row(table, "sasrec", "likelihood", "hr@1")
    for reference in ("sft", "base"):
        assert pd.isna(sasrec[f"{reference}_selection"])
        assert sasrec[[f"delta_vs_{reference}", f"delta_vs_{reference}_ci_low", f"delta_vs_{reference}_ci_high"]].isna().all()
    assert sasrec["popularity_selection"] == "all" and sasrec["delta_vs_popularity"] == pytest.approx(0.25)


def test_popularity_reference_maps_the_protocol():
    metrics = pd.concat([
        long_rows("popularity", "all", "likelihood", "hr@1", [1, 1, 0, 0]),         # 0.5
        long_rows("popularity", "all", "full_ranking", "hr@1", [1, 0, 0, 0]),       # 0.25
        long_rows("random", "none", "likelihood", "hr@1", [0.25] * 4),
        long_rows("dmpo-open", "random", "likelihood_norm", "hr@1", [1, 1, 1, 1]),
        long_rows("dmpo-open", "random", "grounded", "hr@1", [1, 1, 1, 0]),
        long_rows("sasrec", "all", "full_ranking", "hr@1", [0, 0, 0, 0]),
        long_rows("dmpo-candidate", "random", "generation", "valid", [1, 1, 1, 1]),
    ])
    table = summary.summarize(metrics, 50, 0.95, seed=0)
    assert row(table, "dmpo-open", "likelihood_norm", "hr@1")["delta_vs_popularity"] == pytest.approx(1 - 0.5)
    assert row(table, "dmpo-open", "grounded", "hr@1")["delta_vs_popularity"] == pytest.approx(0.75 - 0.25)
    assert row(table, "sasrec", "full_ranking", "hr@1")["delta_vs_popularity"] == pytest.approx(-0.25)
    for method, protocol, metric in [("popularity", "likelihood", "hr@1"), ("popularity", "full_ranking", "hr@1"),
                                     ("random", "likelihood", "hr@1"), ("dmpo-candidate", "generation", "valid")]:
        r = row(table, method, protocol, metric)
        assert np.isnan(r["delta_vs_popularity"]) and pd.isna(r["popularity_selection"])


def test_paired_delta_matches_hand_computation():
    # five samples of five users, already in (user_id, sample_id) order: the resampling order
    a, b = np.array([1, 0, 1, 1, 0.0]), np.array([0, 0, 1, 0, 0.0])
    metrics = pd.concat([long_rows("dmpo-open", "random", "likelihood", "mrr", a),
                         long_rows("sft-open", "random", "likelihood", "mrr", b)])
    r = row(summary.summarize(metrics, 200, 0.9, seed=4), "dmpo-open", "likelihood", "mrr")
    assert r["delta_vs_sft"] == pytest.approx(0.4)
    # the same resamples on both sides: each resample's difference is its weighted mean of a - b
    deltas = summary.bootstrap_weights(5, 200, seed=4) @ (a - b) / 5
    lo, hi = np.quantile(deltas, [0.05, 0.95])
    assert (r["delta_vs_sft_ci_low"], r["delta_vs_sft_ci_high"]) == pytest.approx((lo, hi))
    # auc is averaged per user on both sides: (0.3 + 1.0) / 2 - 0.5
    auc = pd.concat([long_rows("dmpo-open", "random", "likelihood", "auc", [0.2, 0.4, 1.0], users=["u1", "u1", "u2"]),
                     long_rows("sft-open", "random", "likelihood", "auc", [0.5, 0.5, 0.5], users=["u1", "u1", "u2"])])
    assert row(summary.summarize(auc, 0, 0.9, seed=0), "dmpo-open", "likelihood", "auc")["delta_vs_sft"] == \
        pytest.approx(0.15)


def md_line(md: str, label: str, after: str) -> str:
    """The first table line of row `label` after the heading `after`."""
    rest = md[md.index(after):]
    return next(line for line in rest.splitlines() if line.startswith(f"| {label} |"))


def test_markdown_dagger_order_and_paired_differences():
    rng = np.random.default_rng(0)
    metrics = pd.concat([
        long_rows("base-open", "none", "likelihood", "hr@1", rng.random(60) < 0.05),
        long_rows("sft-open", "random", "likelihood", "hr@1", rng.random(60) < 0.5),
        long_rows("dmpo-open", "random", "likelihood", "hr@1", rng.random(60) < 0.9),
        long_rows("sasrec", "all", "likelihood", "hr@1", rng.random(60) < 0.3),
        long_rows("popularity", "all", "likelihood", "hr@1", rng.random(60) < 0.1),
        long_rows("random", "none", "likelihood", "hr@1", np.full(60, 0.05)),
    ])
    table = summary.summarize(metrics, 300, 0.95, seed=0)
    md = summary.markdown(table, 300, 0.95, seed=0)
    # † marks rows whose paired interval against popularity lies above zero
    assert row(table, "dmpo-open", "likelihood", "hr@1")["delta_vs_popularity_ci_low"] > 0
    assert "▲†" in md_line(md, "dmpo-open / random", "### likelihood")
    assert "†" not in md_line(md, "base-open / none", "### likelihood")
    assert "†" in summary.format_cell(row(table, "dmpo-open", "likelihood", "hr@1"))
    assert "†" not in summary.format_cell(row(table, "popularity", "likelihood", "hr@1"))
    # baselines first, then the runs in input order
    start = md.index("### likelihood")
    labels = [line.split(" | ")[0][2:] for line in md[start:].splitlines()[4:10]]
    assert labels == ["random / none", "popularity / all", "sasrec / all", "base-open / none",
                      "sft-open / random", "dmpo-open / random"]
    # paired differences: LLM runs only, each cell the delta and its interval
    assert "| method / selection | hr@1 vs base | hr@1 vs sft | hr@1 vs popularity |" in md
    d = row(table, "dmpo-open", "likelihood", "hr@1")
    cells = md_line(md, "dmpo-open / random", "### Paired differences: likelihood").split(" | ")[1:]
    expected = [f"{d[f'delta_vs_{r}']:+.3f} [{d[f'delta_vs_{r}_ci_low']:+.3f}, {d[f'delta_vs_{r}_ci_high']:+.3f}]"
                for r in ("base", "sft", "popularity")]
    assert [c.strip(" |") for c in cells] == expected
    assert "| sasrec / all |" not in md[md.index("### Paired differences"):]
    assert "†: the interval of the difference to `popularity` lies above zero" in md


def test_a_run_on_another_selection_is_paired_with_its_run_on_the_first():
    dealrec, rand = [1, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0]
    metrics = pd.concat([
        long_rows("sft-open-n4", "random", "likelihood", "hr@1", rand),
        long_rows("sft-open-n4", "dealrec", "likelihood", "hr@1", dealrec),
        long_rows("dmpo-open-n4", "random", "likelihood", "hr@1", [1, 1, 1, 1, 0, 0]),
    ])
    table = summary.summarize(metrics, resamples=300, level=0.95, seed=0, selections=["random", "dealrec"])
    on_dealrec = row(table, "sft-open-n4", "likelihood", "hr@1", selection="dealrec")
    assert on_dealrec["strategy_selection"] == "random"
    assert on_dealrec["delta_vs_strategy"] == pytest.approx(np.mean(dealrec) - np.mean(rand))
    delta, lo, hi = summary.paired_delta("hr@1", summary.metric_frames(metrics)[("toy", "sft-open-n4", "dealrec", "likelihood", "hr@1")],
                                         summary.metric_frames(metrics)[("toy", "sft-open-n4", "random", "likelihood", "hr@1")],
                                         300, 0.95, 0)
    assert (on_dealrec["delta_vs_strategy_ci_low"], on_dealrec["delta_vs_strategy_ci_high"]) == pytest.approx((lo, hi))
    # the first selection's rows and runs on one selection only have no strategy comparison
    for method, selection in (("sft-open-n4", "random"), ("dmpo-open-n4", "random")):
        r = row(table, method, "likelihood", "hr@1", selection=selection)
        assert pd.isna(r["strategy_selection"]) and np.isnan(r["delta_vs_strategy"])
    # the markdown shows the comparison as its own paired column
    text = summary.markdown(table, 300, 0.95, 0)
    assert "hr@1 vs strategy" in text


def test_whole_catalogue_table_reads_every_row_against_sasrec():
    """catalogue and grounded rows, popularity's and random's full ranking: each with HR@10 and its
    paired difference to SASRec's full ranking on the samples both have (by hand: mean of hits)."""
    rows = []
    hits = {("sasrec", "none", "full_ranking"): [1, 1, 0, 1], ("popularity", "none", "full_ranking"): [0, 1, 0, 0],
            ("sft-sid", "random", "catalogue"): [1, 0, 0, None]}
    for (method, selection, protocol), values in hits.items():
        for k, v in enumerate(values):
            if v is None:
                continue
            for metric in ("hr@10", "ndcg@10"):
                rows.append({"dataset": "d", "method": method, "selection": selection, "protocol": protocol,
                             "split": "test", "sample_id": f"s{k}", "user_id": f"u{k}", "metric": metric,
                             "value": float(v)})
    table = summary.summarize(pd.DataFrame(rows), resamples=20, level=0.9, seed=0)
    sid = table[(table["method"] == "sft-sid") & (table["metric"] == "hr@10")].iloc[0]
    assert sid["value"] == pytest.approx(1 / 3)
    assert sid["delta_vs_sasrec"] == pytest.approx(1 / 3 - 2 / 3)  # samples s0-s2, the ones both have
    assert table.loc[table["method"] == "sasrec", "delta_vs_sasrec"].isna().all()
    pop = table[(table["method"] == "popularity") & (table["metric"] == "hr@10")].iloc[0]
    assert pop["delta_vs_sasrec"] == pytest.approx(1 / 4 - 3 / 4)
    md = summary.markdown(table, 20, 0.9, 0)
    section = md.split("### Whole catalogue")[1].split("###")[0]
    lines = [l for l in section.splitlines() if l.startswith("| ") and "method" not in l]
    assert [l.split(" | ")[0] for l in lines] == ["| popularity / none (full_ranking)", "| sasrec / none (full_ranking)",
                                                  "| sft-sid / random (catalogue)"]
    assert "-0.333" in lines[2]
