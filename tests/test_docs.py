"""The generated results tables (workflow/docs.py): the README's default table equals what the
committed snapshot of the default run's summary gives, and the table's formatting, checked on a
hand-made summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow import docs, summary

ROOT = Path(__file__).resolve().parent.parent


def summary_row(method, selection, protocol, metric, value, lo=np.nan, hi=np.nan, n=200, dataset="ml-100k",
                **extra):
    row = {name: np.nan for name in summary.SCHEMA.names}
    row.update(dataset=dataset, trained_on=dataset, method=method, selection=selection, protocol=protocol,
               metric=metric, value=value, ci_low=lo, ci_high=hi, n=n, seed=pd.NA, n_seeds=1, seed_sd=np.nan)
    row.update(extra)
    return row


@pytest.fixture
def frame():
    return pd.DataFrame([
        summary_row("sft-open-n256", "random", "likelihood", "hr@1", 0.145, 0.1, 0.2),
        summary_row("sft-open-n256", "random", "likelihood", "hr@5", 0.425, 0.36, 0.49),  # not a column
        summary_row("random", "none", "likelihood", "hr@1", 0.05, 0.05, 0.05),
        summary_row("sft-open-n256", "random", "grounded", "hr@10", 0.007, 0.0051, 0.0104, n=100),
        summary_row("popularity", "all", "full_ranking", "hr@10", 0.06, 0.03, 0.09),
        summary_row("dmpo-open-n256", "random", "likelihood", "hr@1", 0.185, 0.14, 0.23,
                    delta_vs_sft=0.04, delta_vs_sft_ci_low=0.01, delta_vs_sft_ci_high=0.08),
        summary_row("sft-open-n256", "random", "likelihood", "mrr", 0.29, 0.25, 0.34, seed=43),  # a seed's own row
    ])


def test_intervals_carry_the_points_digits():
    cell = summary.format_cell(pd.Series(summary_row("sft-open", "random", "grounded", "ndcg@10", 0.007, 0.0051, 0.0104)))
    assert cell == "0.007 [0.005, 0.010]"


def test_default_table_rows_columns_and_cells(frame):
    lines = docs.default_table(frame).splitlines()
    assert lines[0] == "| method / selection | likelihood hr@1 | grounded hr@10 | full_ranking hr@10 |"
    assert lines[2] == "| random / none | 0.050 [0.050, 0.050] |  |  |"  # baselines first
    assert lines[3] == "| popularity / all |  |  | 0.060 [0.030, 0.090] |"
    assert lines[4] == "| sft-open-n256 / random | 0.145 [0.100, 0.200] | 0.007 [0.005, 0.010] |  |"
    assert lines[5] == "| dmpo-open-n256 / random | 0.185 [0.140, 0.230] ▲ |  |  |"
    assert "mrr" not in lines[0]  # only per-seed rows: not a figure
    assert lines[7] == ("Test samples per protocol: likelihood 200, grounded 100, full_ranking 200. "
                        "Baselines: random, popularity.")


def test_columns_are_headline_metrics_of_the_protocol_table():
    # a protocol the baselines rank too shows its headline (grounded with ndcg@10); the baselines' full
    # ranking the whole-catalogue metrics; variants (likelihood_norm, likelihood_reversed) only in summary.md
    assert docs.COLUMNS[:5] == (("likelihood", "hr@1"), ("likelihood", "mrr"), ("likelihood", "auc"),
                                ("grounded", "hr@10"), ("grounded", "ndcg@10"))
    assert docs.COLUMNS[-2:] == (("full_ranking", "hr@10"), ("full_ranking", "ndcg@10"))
    assert not {p for p, _ in docs.COLUMNS} & {"likelihood_norm", "likelihood_reversed", "generation_constrained"}


def test_pooled_seed_rows_show_their_spread():
    frame = pd.DataFrame([summary_row("sft-open-n256", "random", "likelihood", "auc", 0.637, 0.606, 0.669,
                                      n_seeds=3, seed_sd=0.007)])
    assert "| sft-open-n256 / random | 0.637 ± 0.007 (3 seeds) [0.606, 0.669] |" in docs.default_table(frame)


def test_several_datasets_get_a_table_each(frame):
    both = pd.concat([frame, frame.assign(dataset="games", trained_on="games")])
    text = docs.default_table(both)
    assert "**ml-100k**" in text and "**games**" in text and text.count("| method / selection |") == 2


def test_replace_between_keeps_the_markers_and_the_rest():
    text = "a\n<!-- x:start -->\nold\n<!-- x:end -->\nb\n"
    assert docs.replace_between(text, "x", "new") == "a\n<!-- x:start -->\nnew\n<!-- x:end -->\nb\n"
    with pytest.raises(ValueError, match="expected one"):
        docs.replace_between("a", "x", "new")


def test_generate_snapshots_and_rewrites(tmp_path, frame):
    results, docs_dir = tmp_path / "results", tmp_path / "docs"
    (results / "studies").mkdir(parents=True)
    docs_dir.mkdir()
    frame.to_parquet(results / "summary.parquet")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- default-results:start -->\nstale\n<!-- default-results:end -->\n")
    (results / "studies" / "alpha.md").write_text("# Study `alpha`\n\n## ml-100k: likelihood auc\n\n| run |\n")
    (results / "studies" / "alpha.png").write_bytes(b"png")
    page = docs_dir / "studies.md"
    page.write_text("<!-- study:alpha:start -->\nrecorded\n<!-- study:alpha:end -->\n"
                    "<!-- study:collapse:start -->\nrecorded\n<!-- study:collapse:end -->\n")
    docs.generate(results, readme, docs_dir)
    assert (docs_dir / "results" / "summary.parquet").read_bytes() == (results / "summary.parquet").read_bytes()
    assert docs.between(readme.read_text(), docs.DEFAULT).endswith(docs.default_table(frame).strip())
    text = page.read_text()
    assert "#### ml-100k: likelihood auc" in text and "![alpha](results/studies/alpha.png)" in text
    assert "recorded" not in docs.between(text, "study:alpha")
    assert docs.between(text, "study:collapse") == "recorded"  # not run: the recorded figures stay
    assert (docs_dir / "results" / "studies" / "alpha.png").is_file()


def test_generate_without_any_summary_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="make run"):
        docs.generate(tmp_path / "results", tmp_path / "README.md", tmp_path / "docs")


def test_readme_table_is_the_snapshots():
    """The README's default table is what `make docs` writes from the committed snapshot."""
    snapshot = ROOT / "docs" / docs.SNAPSHOT
    readme = (ROOT / "README.md").read_text()
    assert docs.markers(docs.DEFAULT)[0] in readme
    if not snapshot.is_file():
        pytest.skip(f"no {snapshot.relative_to(ROOT)} yet: the default run (`make run`, then `make docs`) makes it")
    assert docs.between(readme, docs.DEFAULT) == docs.readme_block(pd.read_parquet(snapshot)).strip(), \
        "README.md's results table differs from docs/results/summary.parquet: run `make docs`"
