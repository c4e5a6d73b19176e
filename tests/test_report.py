"""`snakemake --report` on the shared tiny run, opened in headless Chromium (Debian's, installed
when missing) as a person would open it: the first page must show the summary table."""
from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from system_packages import require_commands
from tiny_workflow import failure, snakemake

pytestmark = pytest.mark.slow

WINDOW = (1600, 1200)
# Files the report must collect (report() outputs of rules/report.smk), relative to results/.
REPORT_FILES = ["report/summary.html", "report/metrics/tiny/likelihood/hr@1.png", "report/training/tiny.png",
                "report/data/tiny.html", "report/data/tiny.png", "report/resources.png"]


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000",  # let the React app render
           f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


class AppText(HTMLParser):
    """The text inside the element with id="app", where the report's JavaScript app renders: the
    raw file also holds the same content as data for the scripts, which proves nothing."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if self.depth:
            self.depth += tag not in self.VOID
        elif dict(attrs).get("id") == "app":
            self.depth = 1

    def handle_endtag(self, tag):
        if self.depth and tag not in self.VOID:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.parts.append(data)


def rendered_text(dom: str) -> str:
    parser = AppText()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


def test_report_shows_summary_in_chromium(tiny_run, tmp_path):
    require_commands({"chromium": "chromium"})
    report = tmp_path / "report.html"
    # as the README says: no --cores (workflow.cores must not be needed, rules/common.smk CORES)
    out = snakemake(tiny_run.workdir, tiny_run.configfile, "--report", str(report), cores=None)
    assert out.returncode == 0, failure(out)
    raw = report.read_text()
    missing = [f for f in REPORT_FILES if f"results/{f}" not in raw]
    assert not missing, f"not in the report: {missing}"
    summary = pd.read_parquet(tiny_run.results / "summary.parquet")
    charts = tiny_run.results / "report" / "metrics"
    # a bar chart for every metric of the summary, and each one in the report
    expected = {f"{d}/{p}/{m}.png" for d, p, m in summary[["dataset", "protocol", "metric"]].itertuples(index=False)}
    assert {str(f.relative_to(charts)) for f in charts.rglob("*.png")} == expected
    assert all(f"results/report/metrics/{c}" in raw for c in expected)

    url = report.as_uri()
    dom = chromium(url, tmp_path / "chromium", "--dump-dom")
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-3000:]
    text = rendered_text(dom.stdout)
    assert "LLM recommenders on identical data" in text, text[:2000]  # report/workflow.rst
    for (dataset, protocol), table in summary.groupby(["dataset", "protocol"]):
        assert f"{dataset} · {protocol} (n = {table['n'].max()} test samples)" in text, (protocol, text[:3000])
    for label in set(summary["method"] + " / " + summary["selection"]):
        assert label in text, label
    for metric in set(summary["metric"]):
        assert metric in text, metric
    likelihood_mrr = summary[(summary["protocol"] == "likelihood") & (summary["metric"] == "mrr")]
    sft = likelihood_mrr[likelihood_mrr["method"].str.startswith("sft-")].iloc[0]  # runs are sft-{prompt}
    assert f"{sft['value']:.3f}" in text and f"[{sft['ci_low']:.3f}, {sft['ci_high']:.3f}]" in text

    shot = tmp_path / "report.png"
    taken = chromium(url, tmp_path / "chromium", f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-3000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (WINDOW[1], WINDOW[0])
    # rendered, not blank: the page has text and figures (many grey levels, dark pixels on white)
    assert len(np.unique(pixels)) > 50 and (pixels < 100).mean() > 0.005, "the screenshot looks blank"


def test_benchmark_records_read_with_unmeasured_memory(tmp_path):
    from workflow.report import read_benchmarks

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (tmp_path / "ds" / "llm").mkdir(parents=True)
    (tmp_path / "ds" / "llm" / "train.tsv").write_text(header + "12.5\t0:00:12\t512.0\t1\t1\t1\t0\t0\t90\t11\n")
    (tmp_path / "summary.tsv").write_text(header + "0.5\t0:00:00\t-\t-\t-\t-\t-\t-\t-\t-\n")
    bench = read_benchmarks(tmp_path)
    assert bench["job"].tolist() == ["ds/llm/train", "summary"]
    assert bench["seconds"].tolist() == [12.5, 0.5]
    assert bench["max_rss_mb"].iloc[0] == 512.0 and np.isnan(bench["max_rss_mb"].iloc[1])
    (tmp_path / "other.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="other.tsv: not a Snakemake benchmark record"):
        read_benchmarks(tmp_path)


def test_summary_html_marks_rows_against_sft_and_popularity():
    from workflow.report import summary_html
    from workflow.summary import summarize

    rng = np.random.default_rng(0)
    rows = []
    for method, selection, rate in [("popularity", "all", 0.1), ("sft-open", "random", 0.4),
                                    ("dmpo-open", "random", 0.9), ("base-open", "none", 0.05)]:
        rows.append(pd.DataFrame({"dataset": "toy", "method": method, "selection": selection,
                                  "protocol": "likelihood", "split": "test", "sample_id": [f"s{i}" for i in range(80)],
                                  "user_id": [f"u{i}" for i in range(80)], "metric": "hr@1",
                                  "value": (rng.random(80) < rate).astype(float)}))
    fragment = summary_html(summarize(pd.concat(rows), 300, 0.95, seed=0), 0.95)
    cells = {line.split("</td>")[0].removeprefix("<tr><td>"): line for line in fragment.splitlines()
             if line.startswith("<tr><td>")}
    assert "▲†</b>" in cells["dmpo-open / random"]  # above sft and above popularity
    assert "▼</b>" in cells["base-open / none"]
    assert "†" not in cells["popularity / all"]
    assert list(cells)[0] == "popularity / all"  # baselines first


def test_a_markdown_table_becomes_an_html_page():
    from workflow.report import markdown_page

    page = markdown_page("# Study `catalogue`: against budget\n\n"
                         "| run | budget=256 | budget=1024 |\n|---|---|---|\n"
                         "| sft sid | 0.010 [0.000, 0.030] | 0.000 [0.000, 0.000] Δ -0.010 [-0.030, +0.000] |\n\n"
                         "Baselines: random 0.007\n")
    assert page.startswith("<style>") and '<div class="llmrec-summary">' in page
    assert "<h1>Study <code>catalogue</code>: against budget</h1>" in page
    assert "<th>budget=1024</th>" in page
    assert "<td>sft sid</td>" in page and "<td>0.010 [0.000, 0.030]</td>" in page
    assert "<td>0.000 [0.000, 0.000] Δ -0.010 [-0.030, +0.000]</td>" in page
    assert "<p>Baselines: random 0.007</p>" in page
