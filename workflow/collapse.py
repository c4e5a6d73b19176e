"""The collapse study: HR@1 against the number of negatives k for DMPO and DynamicPO.

The DynamicPO paper's claim: plain multi-negative DPO (DMPO) degrades as k grows, while DynamicPO's
boundary-critical selection does not. Each (method, k) run is trained from the same SFT adapter on
the same selection and evaluated with the likelihood protocol on the same test samples, so the runs
are paired: besides each HR@1 and its seeded bootstrap interval, the table gives the paired bootstrap
difference against the same method at the smallest k (workflow.summary's statistics, reused).

Inputs: per-sample metrics Parquets (workflow.llm.evaluate), one per run, named on the command line
as METHOD K PATH; optionally the SFT run's as the k-independent reference line of the plot.
Outputs: collapse.parquet (one row per dataset, selection, method, k, metric), collapse.md and
collapse.png (HR@1 against k, one panel per dataset and selection).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow import cli
from workflow.io import atomic_path, write_parquet
from workflow.summary import estimate, metric_frames, paired_delta, read_metrics

log = logging.getLogger(__name__)

PROTOCOL = "likelihood"
METRICS = ("hr@1", "ndcg@10")
SCHEMA = pa.schema([
    ("dataset", pa.string()), ("selection", pa.string()), ("method", pa.string()), ("k", pa.int64()),
    ("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64()), ("ci_low", pa.float64()),
    ("ci_high", pa.float64()), ("delta_vs_smallest_k", pa.float64()), ("delta_ci_low", pa.float64()),
    ("delta_ci_high", pa.float64()),
])


def run_frames(runs: Sequence[tuple[str, int, str]]) -> dict[tuple, pd.DataFrame]:
    """(dataset, selection, method, k, metric) -> per-sample frame of the likelihood protocol.
    A run's file may hold another method name (the main run `dmpo` reused for k = its k)."""
    frames = {}
    for method, k, path in runs:
        found = {key: frame for key, frame in metric_frames(read_metrics([path])).items()
                 if key[3] == PROTOCOL and key[4] in METRICS}
        if not found:
            raise ValueError(f"{path}: no {PROTOCOL} rows of {list(METRICS)} on the test split")
        for (dataset, _, selection, _, metric), frame in found.items():
            frames[(dataset, selection, method, int(k), metric)] = frame
    return frames


def collapse_table(runs: Sequence[tuple[str, int, str]], resamples: int, level: float, seed: int) -> pd.DataFrame:
    frames = run_frames(runs)
    rows = []
    for key in sorted(frames):
        dataset, selection, method, k, metric = key
        value, lo, hi = estimate(metric, frames[key], resamples, level, seed)
        smallest = min(kk for (d, s, m, kk, mm) in frames if (d, s, m, mm) == (dataset, selection, method, metric))
        delta = (paired_delta(metric, frames[key], frames[(dataset, selection, method, smallest, metric)],
                              resamples, level, seed) if k != smallest else (np.nan,) * 3)
        rows.append((dataset, selection, method, k, metric, value, len(frames[key]), lo, hi, *delta))
    return pd.DataFrame(rows, columns=SCHEMA.names)


def reference_values(paths: Sequence[str], metric: str = "hr@1") -> dict[tuple[str, str], float]:
    """(dataset, selection) -> the reference run's (SFT's) statistic, drawn as a flat line."""
    out = {}
    for path in paths:
        for (dataset, _, selection, protocol, name), frame in metric_frames(read_metrics([path])).items():
            if protocol == PROTOCOL and name == metric:
                out[(dataset, selection)] = float(estimate(metric, frame, 0, 0.95, 0)[0])
    return out


def markdown(table: pd.DataFrame, resamples: int, level: float) -> str:
    lines = [f"# Collapse study: likelihood protocol against the number of negatives k",
             "",
             f"Point estimate [{level:.0%} bootstrap interval over test samples, {resamples} resamples]; "
             "Δ = paired bootstrap difference against the same method at its smallest k.", ""]
    for (dataset, selection, metric), part in table.groupby(["dataset", "selection", "metric"], sort=True):
        ks = sorted(part["k"].unique())
        lines += [f"## {dataset}, selection {selection}: {metric} (n = {int(part['n'].max())})", "",
                  "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for method, rows in part.groupby("method", sort=True):
            cells = []
            by_k = rows.set_index("k")
            for k in ks:
                if k not in by_k.index:
                    cells.append("–")
                    continue
                r = by_k.loc[k]
                cell = f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                if np.isfinite(r["delta_vs_smallest_k"]):
                    cell += f" Δ {r['delta_vs_smallest_k']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(table: pd.DataFrame, reference: dict[tuple[str, str], float], out: str | Path, metric: str = "hr@1") -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    part = table[table["metric"] == metric]
    panels = sorted(part.groupby(["dataset", "selection"]).groups)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1), 3.6), squeeze=False)
    for ax, (dataset, selection) in zip(axes[0], panels):
        here = part[(part["dataset"] == dataset) & (part["selection"] == selection)]
        methods = sorted(here["method"].unique())
        for i, method in enumerate(methods):
            rows = here[here["method"] == method].sort_values("k")
            err = np.vstack([rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]])
            # methods side by side around each k (log axis), so equal values do not hide each other
            dodge = 1.06 ** (i - (len(methods) - 1) / 2)
            ax.errorbar(rows["k"] * dodge, rows["value"], yerr=np.nan_to_num(err), marker="o", capsize=3,
                        label=method)
        if (dataset, selection) in reference:
            ax.axhline(reference[(dataset, selection)], color="grey", linestyle="--", label="sft")
        ks = sorted(here["k"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("negatives per sample k")
        ax.set_ylabel(f"{metric} ({PROTOCOL})")
        ax.set_title(f"{dataset} / {selection}")
        ax.legend(frameon=False)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    p = cli.parser("Collapse study: HR@1 against the number of negatives k (table and plot).")
    p.add_argument("--run", nargs=3, action="append", required=True, metavar=("METHOD", "K", "METRICS"),
                   help="one trained run: method name, its k, its per-sample metrics Parquet")
    p.add_argument("--reference", nargs="*", default=[], help="metrics Parquet(s) of the sft run (plot line)")
    p.add_argument("--spec", type=cli.json_arg, required=True, help='JSON: {"bootstrap": B, "ci": 0.95}')
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-parquet", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-png", required=True)

    def run(args):
        runs = []
        for method, k, path in args.run:
            if not k.isdigit() or int(k) < 1:
                raise ValueError(f"--run {method} {k} {path}: k must be a positive integer")
            runs.append((method, int(k), path))
        resamples, level = int(args.spec["bootstrap"]), float(args.spec["ci"])
        table = collapse_table(runs, resamples, level, args.seed)
        write_parquet(table, args.out_parquet, schema=SCHEMA, config=args.spec, seed=args.seed,
                      inputs=[r[2] for r in runs])
        with atomic_path(args.out_md, suffix=".md") as tmp:
            tmp.write_text(markdown(table, resamples, level))
        plot(table, reference_values(args.reference), args.out_png)
        log.info("%d collapse rows from %d runs", len(table), len(runs))

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
