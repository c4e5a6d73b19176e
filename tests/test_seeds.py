"""Training-seed variance in the summary (workflow/summary.py): runs that differ only by -s pool into
one row per figure (mean, sample sd, pooled bootstrap interval, paired differences seed by seed),
each seed's row kept beside it; a summary without seeded runs is as before."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow import summary
from workflow.config import ConfigError, validate

N, RESAMPLES, LEVEL, SEED = 40, 400, 0.9, 7  # SEED: the bootstrap's and the config's training seed


def long_rows(method, selection, protocol, metric, values):
    return pd.DataFrame({
        "dataset": "toy", "method": method, "selection": selection, "protocol": protocol, "split": "test",
        "sample_id": [f"s{i:02d}" for i in range(len(values))], "user_id": [f"u{i:02d}" for i in range(len(values))],
        "metric": metric, "value": np.asarray(values, dtype=float),
    })


def one(table, method, seed=None, metric="hr@1"):
    rows = table[(table["method"] == method) & (table["metric"] == metric)
                 & (table["seed"].isna() if seed is None else table["seed"] == seed)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def hand_interval(per_sample: np.ndarray) -> tuple[float, float]:
    """The percentile interval of the mean of per-sample values under the summary's resamples
    (samples are in user order: u00, u01, ...)."""
    draws = summary.bootstrap_weights(len(per_sample), RESAMPLES, SEED) @ per_sample / len(per_sample)
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return lo, hi


@pytest.fixture(scope="module")
def seeded():
    """sft and dmpo at training seeds 7 (the config's: no -s) and 8, base once, on 40 test samples."""
    rng = np.random.default_rng(0)
    values = {name: (rng.random(N) < p).astype(float) for name, p in
              [("sft7", 0.3), ("sft8", 0.5), ("dmpo7", 0.6), ("dmpo8", 0.9), ("base", 0.1)]}
    metrics = pd.concat([long_rows("base-open", "none", "likelihood", "hr@1", values["base"]),
                         long_rows("sft-open", "random", "likelihood", "hr@1", values["sft7"]),
                         long_rows("sft-open-s8", "random", "likelihood", "hr@1", values["sft8"]),
                         long_rows("dmpo-open", "random", "likelihood", "hr@1", values["dmpo7"]),
                         long_rows("dmpo-open-s8", "random", "likelihood", "hr@1", values["dmpo8"])])
    return values, summary.summarize(metrics, RESAMPLES, LEVEL, SEED)


def test_a_figure_of_two_seeds_is_their_mean_sd_and_pooled_interval(seeded):
    values, table = seeded
    assert len(table) == 1 + 3 + 3  # base; sft and dmpo: the pooled row and one per seed
    sft = one(table, "sft-open")
    means = [values["sft7"].mean(), values["sft8"].mean()]
    assert sft["value"] == pytest.approx(np.mean(means))
    assert sft["seed_sd"] == pytest.approx(abs(means[0] - means[1]) / np.sqrt(2))  # sample sd of two
    assert sft["n_seeds"] == 2 and sft["n"] == N
    # each resample applied to both seeds, their means averaged: the interval of the per-sample mean
    assert (sft["ci_low"], sft["ci_high"]) == pytest.approx(hand_interval((values["sft7"] + values["sft8"]) / 2))
    assert sft["ci_low"] <= sft["value"] <= sft["ci_high"]
    for seed, name in ((7, "sft7"), (8, "sft8")):
        row = one(table, "sft-open", seed)
        assert row["value"] == pytest.approx(values[name].mean()) and row["n_seeds"] == 1
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(hand_interval(values[name]))
        assert np.isnan(row["seed_sd"])


def test_paired_differences_are_seed_by_seed_then_pooled(seeded):
    values, table = seeded
    d7, d8 = values["dmpo7"] - values["sft7"], values["dmpo8"] - values["sft8"]
    assert one(table, "dmpo-open", 8)["delta_vs_sft"] == pytest.approx(d8.mean())  # not against seed 7's sft
    assert one(table, "dmpo-open", 7)["delta_vs_sft"] == pytest.approx(d7.mean())
    dmpo = one(table, "dmpo-open")
    assert dmpo["delta_vs_sft"] == pytest.approx((d7.mean() + d8.mean()) / 2) and dmpo["sft_selection"] == "random"
    assert (dmpo["delta_vs_sft_ci_low"], dmpo["delta_vs_sft_ci_high"]) == pytest.approx(hand_interval((d7 + d8) / 2))
    # every seed against the one base row, pooled the same way
    assert dmpo["delta_vs_base"] == pytest.approx((values["dmpo7"] + values["dmpo8"]).mean() / 2 - values["base"].mean())
    # base, untrained, has one row, read against sft at every seed
    base = one(table, "base-open")
    assert base["n_seeds"] == 1 and pd.isna(base["seed"])
    assert base["delta_vs_sft"] == pytest.approx(values["base"].mean() - np.mean([values["sft7"].mean(),
                                                                                values["sft8"].mean()]))


def test_a_seed_without_its_sft_run_has_no_pooled_sft_comparison():
    rng = np.random.default_rng(1)
    metrics = pd.concat([long_rows("sft-open", "random", "likelihood", "hr@1", rng.random(N)),
                         long_rows("dmpo-open", "random", "likelihood", "hr@1", rng.random(N)),
                         long_rows("dmpo-open-s8", "random", "likelihood", "hr@1", rng.random(N))])
    table = summary.summarize(metrics, 50, LEVEL, SEED)
    assert one(table, "dmpo-open", 7)["sft_selection"] == "random"
    assert pd.isna(one(table, "dmpo-open", 8)["sft_selection"]) and np.isnan(one(table, "dmpo-open", 8)["delta_vs_sft"])
    assert np.isnan(one(table, "dmpo-open")["delta_vs_sft"])  # seed 8 has no sft run of its own seed


def test_without_seeded_runs_every_row_is_its_runs_own_as_before():
    rng = np.random.default_rng(2)
    frames = {name: rng.random(N) for name in ("base-open", "sft-open-n8", "dmpo-open-n8", "sasrec")}
    metrics = pd.concat([long_rows(name, "none" if name == "base-open" else "random", "likelihood", "mrr", v)
                         for name, v in frames.items()])
    table = summary.summarize(metrics, RESAMPLES, LEVEL, SEED)
    assert table["method"].tolist() == list(frames) and table["seed"].isna().all()
    assert (table["n_seeds"] == 1).all() and table["seed_sd"].isna().all()
    keyed = summary.metric_frames(metrics)
    frame = {key[1]: f for key, f in keyed.items()}
    for row in table.itertuples():
        assert (row.value, row.ci_low, row.ci_high) == summary.estimate("mrr", frame[row.method], RESAMPLES, LEVEL, SEED)
    dmpo = one(table, "dmpo-open-n8", metric="mrr")
    expected = summary.paired_delta("mrr", frame["dmpo-open-n8"], frame["sft-open-n8"], RESAMPLES, LEVEL, SEED)
    assert (dmpo["delta_vs_sft"], dmpo["delta_vs_sft_ci_low"], dmpo["delta_vs_sft_ci_high"]) == expected
    assert "seeds" not in summary.markdown(table, RESAMPLES, LEVEL, SEED)


def test_markdown_shows_one_row_per_figure_with_its_spread(seeded):
    values, table = seeded
    md = summary.markdown(table, RESAMPLES, LEVEL, SEED)
    lines = [line for line in md.splitlines() if line.startswith("| sft-open / random |")]
    assert len(lines) == 2  # the likelihood table and the paired differences, not one per seed
    assert f"± {one(table, 'sft-open')['seed_sd']:.3f} (2 seeds)" in lines[0]
    assert "Training seeds (config `seeds`)" in md


def test_two_names_of_one_run_are_refused():
    metrics = pd.concat([long_rows("sft-open", "random", "likelihood", "hr@1", np.ones(4)),
                         long_rows("sft-open-s7", "random", "likelihood", "hr@1", np.zeros(4))])
    with pytest.raises(ValueError, match="are one run"):
        summary.summarize(metrics, 10, LEVEL, SEED)


def test_report_charts_draw_each_seed(seeded, tmp_path):
    from workflow.report import method_colors, metric_chart, metric_charts, summary_html

    values, table = seeded
    written = metric_charts(table, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == ["toy/likelihood/hr@1.png"]
    figures = summary.figure_rows(table)
    fig = metric_chart(figures, "hr@1", method_colors(table["method"].unique().tolist()), table[table["seed"].notna()])
    bars = (figures["method"] + " / " + figures["selection"]).tolist()
    dots = {bars[int(line.get_xdata()[0])]: sorted(line.get_ydata()) for line in fig.axes[0].lines
            if line.get_marker() == "o"}
    assert dots == {"sft-open / random": sorted([values["sft7"].mean(), values["sft8"].mean()]),
                    "dmpo-open / random": sorted([values["dmpo7"].mean(), values["dmpo8"].mean()])}
    html = summary_html(table, LEVEL)
    assert html.count("sft-open / random") == 1 and "(2 seeds)" in html


@pytest.mark.parametrize("seeds", [[], [42, 42], ["x"]])
def test_schema_rejects_a_malformed_seeds_list(seeds):
    with pytest.raises(ConfigError, match="seeds"):
        validate({"datasets": {"d": {"format": "recbole-atomic", "path": "embedded"}}, "seeds": seeds})
