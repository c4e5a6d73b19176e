"""Figures and tables for the HTML report (`snakemake --report results/report.html`).

The rules in rules/report.smk call these builders, so that every figure is an output of the
workflow and `snakemake --report` only collects them (report/workflow.rst, report/*.rst captions):

- `summary`: the summary table as an HTML fragment (shown on the report's first page) and one bar
  chart per (dataset, protocol, metric) across methods, with the bootstrap intervals as whiskers
  (and, for a figure pooling several training seeds, each seed's value as a dot);
- `training`: the loss curves of every trained run of a dataset, from each adapter's
  train_log.parquet;
- `data`: a dataset's statistics (an HTML table) and its distributions (a figure);
- `resources`: runtime and peak memory of every job, from the benchmark records of results/benchmarks;
- `page`: a Markdown table of results/ (a study's, the tuned table) as an HTML page.

Each runs without Snakemake, e.g.
`python -m workflow.report summary --summary results/summary.parquet --html s.html --charts charts/`.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from workflow import cli
from workflow.baseline_table import BASELINES
from workflow.io import atomic_dir, atomic_path
from workflow.summary import figure_rows, markers, row_names, seed_spread, wide_table

log = logging.getLogger(__name__)

DPI = 100
# One colour per method, the same in every chart; methods not listed get the next free colour.
METHOD_ORDER = [*BASELINES, "base-open", "base-candidate", "sft-open", "sft-candidate",
                "dmpo-open", "sdpo-open", "dynamicpo-open"]

# Scoped to the fragment's class: the fragment is also embedded in the report's first page.
STYLE = """<style>
.llmrec-summary { font-family: system-ui, sans-serif; font-size: 12px; overflow-x: auto; }
.llmrec-summary table { border-collapse: collapse; margin: 0 0 1.2em 0; }
.llmrec-summary th, .llmrec-summary td { border-bottom: 1px solid #ddd; padding: 2px 6px; text-align: right;
  white-space: nowrap; vertical-align: top; }
.llmrec-summary th:first-child, .llmrec-summary td:first-child { text-align: left; }
.llmrec-summary .ci { color: #666; font-size: 10px; }
.llmrec-summary caption { text-align: left; font-weight: 600; padding: 4px 0; }
</style>"""


def _pyplot():
    """matplotlib without a display (a cluster node has none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    palette = _pyplot().get_cmap("tab10").colors
    order = METHOD_ORDER + sorted(set(methods) - set(METHOD_ORDER))
    return {m: palette[order.index(m) % len(palette)] for m in methods}


# ----------------------------------------------------------------------------- summary


def _html_cell(row: pd.Series) -> str:
    if not np.isfinite(row["value"]):
        return "n/a"
    cell = f"{row['value']:.3f}"
    marker = markers(row)
    if marker:
        cell = f"<b>{cell} {marker}</b>"
    cell += seed_spread(row)
    if np.isfinite(row["ci_low"]):
        cell += f'<br><span class="ci">[{row["ci_low"]:.3f}, {row["ci_high"]:.3f}]</span>'  # the point's digits
    return cell


def summary_html(summary: pd.DataFrame, level: float | None = None) -> str:
    """Per dataset and protocol, one table (rows method / selection, columns metrics) with the
    statistic, its bootstrap interval below it, ▲ / ▼ against sft and † above popularity, as a
    self-contained fragment."""
    ci = f"{level:.0%} " if level else ""
    parts = [STYLE, '<div class="llmrec-summary">']
    if summary.empty:
        parts.append("<p>The summary is empty: no test-split metrics were found.</p>")
    for dataset, by_dataset in figure_rows(summary).groupby("dataset", sort=False):
        for protocol, table in by_dataset.groupby("protocol", sort=False):
            wide = wide_table(table, cell=_html_cell)
            n = int(table["n"].max())
            parts.append(f"<table><caption>{html.escape(str(dataset))} · {html.escape(str(protocol))} "
                         f"(n = {n} test samples)</caption>")
            parts.append("<tr><th>method / selection</th>"
                         + "".join(f"<th>{html.escape(str(m))}</th>" for m in wide.columns) + "</tr>")
            for row, cells in wide.iterrows():
                tds = "".join(f"<td>{c if isinstance(c, str) else ''}</td>" for c in cells)
                parts.append(f"<tr><td>{html.escape(str(row))}</td>{tds}</tr>")
            parts.append("</table>")
    parts.append(f"<p>Each cell: the statistic on the test split and its {ci}bootstrap interval; "
                 "▲ / ▼: the paired bootstrap interval of the difference to sft (the run sft-P of the row's "
                 "prompt P) lies above / below zero; †: the paired interval of the difference to the "
                 "popularity baseline lies above zero (legend and paired differences in summary.md)."
                 + (" ± : the standard deviation over training seeds; the cell is their mean, its interval the "
                    "bootstrap interval pooled over seeds." if (summary["n_seeds"] > 1).any() else "")
                 + "</p></div>")
    return "\n".join(parts)


def metric_chart(table: pd.DataFrame, title: str, colors: dict[str, str], per_seed: pd.DataFrame | None = None):
    """Bars: one per method / selection, the value with its bootstrap interval as whiskers; a bar
    pooling several training seeds also shows each seed's value (`per_seed`, its per-seed rows) as a dot."""
    plt = _pyplot()
    labels = row_names(table).tolist()
    values = table["value"].to_numpy(dtype=float)
    low = np.where(np.isfinite(table["ci_low"]), values - table["ci_low"].to_numpy(dtype=float), 0)
    high = np.where(np.isfinite(table["ci_high"]), table["ci_high"].to_numpy(dtype=float) - values, 0)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 1.5), 3.6), dpi=DPI)
    x = np.arange(len(labels))
    ax.bar(x, np.nan_to_num(values), color=[colors[m] for m in table["method"]],
           yerr=np.vstack([np.clip(low, 0, None), np.clip(high, 0, None)]), capsize=4, ecolor="#333")
    seed_values = seed_points(ax, labels, per_seed)
    tops = np.fmax(np.nan_to_num(values) + np.clip(high, 0, None), seed_values)
    for xi, (value, top, marker) in enumerate(zip(values, tops, table.apply(markers, axis=1))):
        text = "n/a" if not np.isfinite(value) else f"{value:.3f}{' ' + marker if marker else ''}"
        ax.annotate(text, (xi, top), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    top = np.nanmax(np.r_[table["ci_high"].to_numpy(dtype=float), values, seed_values, 0.0])
    ax.set_ylim(0, 1.1 if top <= 1 else top * 1.15)  # room for the labels above the whiskers
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def seed_points(ax, labels: list[str], per_seed: pd.DataFrame | None) -> np.ndarray:
    """Each training seed's value as a dot on its bar (bars by `labels`, row_names); returns the
    highest dot per bar (NaN: none), so labels and limits clear them."""
    highest = np.full(len(labels), np.nan)
    if per_seed is None or per_seed.empty:
        return highest
    for xi, (label, seeds) in enumerate((label, per_seed[row_names(per_seed) == label]) for label in labels):
        if len(seeds):
            ax.plot(np.full(len(seeds), xi), seeds["value"], "o", ms=3.5, mfc="white", mec="black", zorder=3)
            highest[xi] = np.nanmax(seeds["value"].to_numpy(dtype=float))
    return highest


def metric_charts(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per (dataset, protocol, metric): `out_dir/{dataset}/{protocol}/{metric}.png`; one bar
    per figure (figure_rows), with its per-seed values as dots when it pools training seeds."""
    plt = _pyplot()
    colors = method_colors(summary["method"].unique().tolist())
    per_seed = summary[summary["seed"].notna()]
    written = []
    for (dataset, protocol, metric), table in figure_rows(summary).groupby(["dataset", "protocol", "metric"],
                                                                           sort=False):
        path = out_dir / str(dataset) / str(protocol) / f"{metric}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        seeds = per_seed[(per_seed["dataset"] == dataset) & (per_seed["protocol"] == protocol)
                         & (per_seed["metric"] == metric)]
        fig = metric_chart(table, f"{dataset} · {protocol} · {metric} (n = {int(table['n'].max())})", colors, seeds)
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- training


def read_train_logs(adapters: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """{"method / selection": train log} from adapter folders .../{method}/{selection}/adapter."""
    logs = {}
    for adapter in adapters:
        adapter = Path(adapter)
        path = adapter / "train_log.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no training log in the adapter folder")
        logs[f"{adapter.parent.parent.name} / {adapter.parent.name}"] = pd.read_parquet(path)
    return logs


CURRICULUM_COLUMNS = ("d_0", "d_e", "lambda_e")  # SOFT's per-epoch curriculum (workflow/llm/soft.py)


def curriculum_axis(ax, frame: pd.DataFrame) -> None:
    """SOFT's curriculum on a second axis of a loss panel: lambda_e, the self-distilled answers'
    weight of each step's epoch, and d_e / d_0, the probe distance it was set from (measured before
    the epoch) relative to the untuned model's."""
    right = ax.twinx()
    right.step(frame["step"], frame["lambda_e"], where="post", color="black", lw=1, label="lambda_e")
    right.step(frame["step"], frame["d_e"] / frame["d_0"], where="post", color="gray", lw=1, ls="--",
               label="d_e / d_0")
    right.set_ylim(0, max(1.05, float((frame["d_e"] / frame["d_0"]).max()) * 1.05))
    right.legend(fontsize=7, loc="upper right")


def loss_curves(logs: dict[str, pd.DataFrame], title: str):
    """One panel per trained run: its loss per optimizer step (and a running mean on long runs);
    a SOFT run's panel also shows its curriculum (`curriculum_axis`). Panels, not one plot: SFT's
    cross-entropy and the preference losses are on different scales."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    if not logs:
        raise ValueError("no training logs to plot")
    cols = min(3, len(logs))
    rows = -(-len(logs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), dpi=DPI, squeeze=False)
    colors = method_colors([name.split(" / ")[0] for name in logs])
    for ax, (name, frame) in zip(axes.flat, logs.items()):
        if not {"step", "loss"} <= set(frame.columns):
            raise ValueError(f"training log of {name} has no step/loss columns: {list(frame.columns)}")
        color = colors[name.split(" / ")[0]]
        ax.plot(frame["step"], frame["loss"], marker="o" if len(frame) <= 40 else None, ms=3, lw=1,
                color=color, alpha=0.5 if len(frame) > 40 else 1.0)
        if len(frame) > 40:
            ax.plot(frame["step"], frame["loss"].rolling(max(5, len(frame) // 20), min_periods=1).mean(),
                    color=color, lw=2)
        ax.ticklabel_format(axis="y", useOffset=False)  # losses near ln 2 would show as 1e-5 + 0.6931
        if set(CURRICULUM_COLUMNS) <= set(frame.columns):
            curriculum_axis(ax, frame)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{name} ({len(frame)} steps)", fontsize=10)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(logs):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- dataset


def dataset_statistics(interactions: pd.DataFrame, items: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Counts a reader checks first: size, density, per-user activity, samples per split."""
    users = interactions["user_id"].nunique()
    n_items = interactions["item_id"].nunique()
    per_user = interactions.groupby("user_id").size()
    history = samples["history"].map(len)
    rows = [
        ("users", users),
        ("items (with interactions)", n_items),
        ("items (in the item table)", len(items)),
        ("interactions", len(interactions)),
        ("density", f"{len(interactions) / max(1, users * n_items):.4f}"),
        ("interactions per user (median / max)", f"{per_user.median():g} / {per_user.max()}"),
        ("time span", f"{pd.to_datetime(interactions['timestamp'].min(), unit='s'):%Y-%m-%d} to "
                      f"{pd.to_datetime(interactions['timestamp'].max(), unit='s'):%Y-%m-%d}"),
    ]
    for split in ["train", "valid", "test"]:
        rows.append((f"{split} samples", int((samples["split"] == split).sum())))
    rows += [
        ("history length (mean / max)", f"{history.mean():.1f} / {history.max()}"),
        ("candidates per sample", "/".join(str(n) for n in sorted(samples["candidates"].map(len).unique()))),
    ]
    return pd.DataFrame(rows, columns=["statistic", "value"])


def statistics_html(stats: pd.DataFrame, dataset: str) -> str:
    body = "".join(f"<tr><td>{html.escape(str(s))}</td><td>{html.escape(str(v))}</td></tr>"
                   for s, v in stats.itertuples(index=False))
    return (f'{STYLE}<div class="llmrec-summary"><table><caption>{html.escape(dataset)}</caption>'
            f"<tr><th>statistic</th><th>value</th></tr>{body}</table></div>")


def dataset_figure(interactions: pd.DataFrame, samples: pd.DataFrame, dataset: str):
    """Interactions per user, per item (popularity, log scale) and history length per split."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=DPI)
    axes[0].hist(interactions.groupby("user_id").size(), bins=30, color="#4c72b0")
    axes[0].set_title("interactions per user", fontsize=10)
    popularity = interactions.groupby("item_id").size().sort_values(ascending=False).to_numpy()
    axes[1].plot(np.arange(1, len(popularity) + 1), popularity, color="#dd8452")
    if popularity[0] > 20 * popularity[-1]:  # long tail: log scale
        axes[1].set_yscale("log")
    axes[1].set_title("interactions per item (items by rank)", fontsize=10)
    lengths = samples["history"].map(len)
    bins = np.arange(0, lengths.max() + 2) - 0.5
    for split in ["train", "valid", "test"]:
        of_split = lengths[samples["split"] == split]
        if len(of_split):  # fractions: train has far more samples than valid and test
            axes[2].hist(of_split, bins=bins, alpha=0.6, label=f"{split} ({len(of_split)})",
                         weights=np.full(len(of_split), 1 / len(of_split)))
    axes[2].set_title("history length (fraction of a split's samples)", fontsize=10)
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(dataset, fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- resources


def read_benchmarks(folder: Path) -> pd.DataFrame:
    """One row per benchmark record under `folder` (Snakemake's `benchmark:` TSVs): the job (its
    path without .tsv), runtime in seconds and peak resident memory in MB (mean over repeats)."""
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        if not {"s", "max_rss"} <= set(frame.columns):
            raise ValueError(f"{path}: not a Snakemake benchmark record (columns {list(frame.columns)})")
        rss = pd.to_numeric(frame["max_rss"], errors="coerce")  # "-" when it could not be measured
        rows.append((str(path.relative_to(folder).with_suffix("")), float(frame["s"].mean()), float(rss.mean())))
    if not rows:
        raise FileNotFoundError(f"no benchmark records under {folder}")
    return pd.DataFrame(rows, columns=["job", "seconds", "max_rss_mb"])


def resources_figure(bench: pd.DataFrame):
    plt = _pyplot()
    height = 1.2 + 0.28 * len(bench)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, height), dpi=DPI, sharey=True)
    y = np.arange(len(bench))[::-1]
    left.barh(y, bench["seconds"], color="#4c72b0")
    left.set_yticks(y, bench["job"], fontsize=8)
    left.set_xlabel("runtime (s)")
    left.set_title(f"runtime per job (total {bench['seconds'].sum():.0f} s)", fontsize=10)
    right.barh(y, bench["max_rss_mb"].fillna(0), color="#55a868")
    right.set_xlabel("peak resident memory (MB)")
    right.set_title("peak memory per job", fontsize=10)
    for ax, column, fmt in [(left, "seconds", "{:.1f}"), (right, "max_rss_mb", "{:.0f}")]:
        for yi, value in zip(y, bench[column]):
            ax.annotate("n/a" if not np.isfinite(value) else fmt.format(value),
                        (0 if not np.isfinite(value) else value, yi),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- tables of studies and tuning


def markdown_page(text: str) -> str:
    """A Markdown document of results/ (a study's table, the tuned table) as a self-contained HTML
    fragment in the summary's style (the report shows HTML pages, not Markdown); Python-Markdown's
    `tables` extension reads the pipe tables."""
    import markdown

    return "\n".join([STYLE, '<div class="llmrec-summary">', markdown.markdown(text, extensions=["tables"]),
                      "</div>"])


# ----------------------------------------------------------------------------- command line


def _save(fig, path: str | Path) -> None:
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip("."))
    _pyplot().close(fig)


def _write_text(text: str, path: str | Path) -> None:
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        tmp.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    p = cli.parser("Figures and tables for the HTML report.")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("summary", help="summary table (HTML) and one bar chart per metric")
    s.add_argument("--summary", required=True, help="summary.parquet")
    s.add_argument("--ci", type=float, default=None, help="interval level of the summary, for the legend")
    s.add_argument("--html", required=True)
    s.add_argument("--charts", required=True, help="folder for {dataset}/{protocol}/{metric}.png")
    t = sub.add_parser("training", help="loss curves of a dataset's trained runs")
    t.add_argument("--adapters", nargs="+", required=True, help="adapter folders with train_log.parquet")
    t.add_argument("--dataset", required=True)
    t.add_argument("--out", required=True)
    d = sub.add_parser("data", help="dataset statistics (HTML) and distributions (figure)")
    for name in ("interactions", "items", "samples", "dataset", "html", "png"):
        d.add_argument(f"--{name}", required=True)
    r = sub.add_parser("resources", help="runtime and peak memory per job from benchmark records")
    r.add_argument("--benchmarks", required=True, help="folder of benchmark TSVs (searched recursively)")
    r.add_argument("--out", required=True)
    g = sub.add_parser("page", help="a Markdown table of results/ as an HTML page")
    g.add_argument("--md", required=True)
    g.add_argument("--html", required=True)

    def run(args):
        if args.what == "summary":
            summary = pd.read_parquet(args.summary)
            _write_text(summary_html(summary, args.ci), args.html)
            with atomic_dir(args.charts) as tmp:
                charts = metric_charts(summary, tmp)
            log.info("summary table and %d metric charts", len(charts))
        elif args.what == "training":
            logs = read_train_logs(args.adapters)
            _save(loss_curves(logs, f"{args.dataset}: training loss"), args.out)
            log.info("loss curves of %d runs", len(logs))
        elif args.what == "data":
            interactions, samples = pd.read_parquet(args.interactions), pd.read_parquet(args.samples)
            stats = dataset_statistics(interactions, pd.read_parquet(args.items), samples)
            _write_text(statistics_html(stats, args.dataset), args.html)
            _save(dataset_figure(interactions, samples, args.dataset), args.png)
        elif args.what == "page":
            _write_text(markdown_page(Path(args.md).read_text(encoding="utf-8")), args.html)
        else:
            bench = read_benchmarks(Path(args.benchmarks))
            _save(resources_figure(bench), args.out)
            log.info("%d benchmark records", len(bench))

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
