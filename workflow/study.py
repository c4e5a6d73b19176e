"""Studies: a grid of config variants -> runs -> one table and one plot with paired differences.

Every study has the same shape. Some methods are trained at every point of a grid of overrides
(any axis of workflow/runs.py's RUN_AXES but the seed: prompt, negatives k, beta, learning rate,
LoRA rank, iLoRA's experts and gate, SOFT's alpha, SPRec's rounds, epochs, training budget;
`studies.<name>` in the config, runs named as in workflow/runs.py) on the same selection, and
evaluated under the study's protocols (likelihood by default; grounded, generation, ... where the
run's prompt supports them) on the same samples of one split, so the runs are paired. The table
gives, per protocol and metric, each run's statistic with its seeded bootstrap interval and the paired bootstrap
difference (`delta`) against the same series at the smallest value of the study's x axis, or, when
the study names a `reference` method, against that method's run (e.g. iLoRA's experts against
LLaRA; marked `"reference": true` among the runs, drawn as a line). workflow.summary's statistics
are reused. Baselines (random, popularity, SASRec) on the same split are drawn as horizontal lines
and listed under each table.

- collapse (DynamicPO paper): dmpo and dynamicpo at k = 1, 3, 7, 15; x = k.
- learning_curve: sft and dmpo at several training budgets and epochs, both prompts; x = budget;
  evaluated on the validation split, where the default config's settings are chosen.
- experts / gates (iLoRA paper): ilora at 1, 2, 4, 8 experts, and with the sequence, random and
  uniform gate; x = n_experts / gate; reference llara.
- alpha (SOFT paper): soft at alpha 0.1, 1, 10, 100; x = alpha; reference sft.

    python -m workflow.study --spec '{"name": ..., "x": "budget", "split": "valid",
        "protocols": ["likelihood", "grounded"], "metrics": ["hr@1", "auc", "hr@20"], "bootstrap": 1000,
        "ci": 0.95, "runs": [{"dataset": ..., "selection": ..., "method": ..., "prompt": ..., "k": ...,
        "epochs": ..., "budget": ..., "path": ".../metrics.parquet"}, ...]}' \
        --baselines .../baselines/metrics.parquet .../surrogate/metrics.parquet --seed 42 \
        --out-parquet results/studies/NAME.parquet --out-md ... --out-png ...
"""
from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow import baseline_table, cli
from workflow.io import atomic_path, write_parquet
from workflow.protocol_table import popularity_protocol
from workflow.runs import GRID_AXES, value_text
from workflow.summary import estimate, metric_frames, paired_delta, read_metrics

log = logging.getLogger(__name__)

AXES = tuple(a.name for a in GRID_AXES)  # the grid keys (workflow/runs.py RUN_AXES), each a column
LABELS = ("dataset", "selection", "method", *AXES)
KEY = (*LABELS, "protocol", "metric")  # a table row's key: the run's labels, then protocol and metric
BASELINES = tuple(baseline_table.BASELINES)
SCHEMA = pa.schema([
    ("dataset", pa.string()), ("selection", pa.string()), ("method", pa.string()),
    *((a.name, {int: pa.int64(), float: pa.float64(), str: pa.string()}[a.kind]) for a in GRID_AXES),
    ("protocol", pa.string()),
    ("metric", pa.string()),
    ("is_reference", pa.bool_()),
    ("value", pa.float64()), ("n", pa.int64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("delta", pa.float64()), ("delta_ci_low", pa.float64()), ("delta_ci_high", pa.float64()),
    ("n_seeds", pa.int64()), ("train_seconds", pa.float64()), ("train_cpu_seconds", pa.float64()),
    ("train_max_rss_mb", pa.float64()),
])
INTEGER_AXES = tuple(a.name for a in GRID_AXES if a.kind is int)
COST_COLUMNS = ("n_seeds", "train_seconds", "train_cpu_seconds", "train_max_rss_mb")  # with_costs adds them


def label_key(run: dict[str, Any]) -> tuple:
    return tuple(run.get(name) for name in LABELS)


def run_frames(runs: Sequence[dict[str, Any]], split: str, protocols: Sequence[str],
               metrics: Sequence[str], labels=None) -> dict[tuple, pd.DataFrame]:
    """(labels..., protocol, metric) -> per-sample frame on `split`, for each of `protocols` and
    `metrics` a run's file holds (a run whose prompt lacks a protocol has none of its rows). A run's
    file may hold another method name (a main run reused at its own grid point). Runs that differ
    only in their training `seed` are pooled: their per-sample values averaged over the seeds, on
    the samples every seed was scored on (as the summary pools seeds). `labels(run)`: what tells
    runs apart (default `label_key`; runs with equal labels are pooled)."""
    labels = labels or label_key
    per_seed: dict[tuple, list[pd.DataFrame]] = {}
    for run in runs:
        found = {key: frame for key, frame in metric_frames(read_metrics([run["path"]]), split=split).items()
                 if key[3] in protocols and key[4] in metrics}
        if not found:
            raise ValueError(f"{run['path']}: no rows of the protocols {list(protocols)} and metrics "
                             f"{list(metrics)} on the {split} split")
        for (_, _, _, protocol, metric), frame in found.items():
            per_seed.setdefault((*labels(run), protocol, metric), []).append(frame)
    return {key: pooled(frames) for key, frames in per_seed.items()}


def pooled(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The mean over seeds of each sample's values (user_id kept), on the common samples."""
    if len(frames) == 1:
        return frames[0]
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index, sort=False)
    first = frames[0].loc[common]
    values = [c for c in first.columns if c != "user_id"]
    mean = sum(f.loc[common, values].astype("float64") for f in frames) / len(frames)
    return pd.concat([first[["user_id"]], mean], axis=1)


def normal_key(values: Sequence[Any]) -> tuple:
    """Labels comparable across sources: missing values as None, numbers as floats."""
    def one(v):
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return None
        return float(v) if isinstance(v, numbers.Number) and not isinstance(v, bool) else v

    return tuple(one(v) for v in values)


def training_costs(runs: Sequence[dict[str, Any]]) -> dict[tuple, tuple[int, float, float, float]]:
    """Per run's labels: (seeds, mean training-job wall seconds, mean CPU seconds, mean peak resident
    memory in MB) over its seeds, from the training jobs' Snakemake benchmark records (NaN for an
    untuned run, and CPU seconds for a record without them). CPU seconds compare methods fairly
    when jobs share the machine: wall time also counts the waits for a core."""
    found: dict[tuple, list] = {}
    for run in runs:
        entry = found.setdefault(normal_key(label_key(run)), [set(), [], [], []])
        entry[0].add(run.get("seed"))
        path = run.get("benchmark")
        if path and Path(path).is_file():
            record = pd.read_csv(path, sep="\t")
            entry[1].append(float(record["s"].iloc[-1]))
            entry[2].append(float(record["cpu_time"].iloc[-1]) if "cpu_time" in record.columns else np.nan)
            entry[3].append(float(record["max_rss"].iloc[-1]))

    def mean(values):
        return float(np.mean(values)) if values else np.nan

    return {key: (len(seeds), mean(sec), mean(cpu), mean(rss)) for key, (seeds, sec, cpu, rss) in found.items()}


def series_key(key: tuple, x: str) -> tuple:
    """The key without its x value: the runs one line of the plot joins."""
    return tuple(None if name == x else value for name, value in zip(KEY, key, strict=True))


def sort_value(value) -> tuple:
    """Numbers in numeric order (numpy's too), before strings; None last."""
    if value is None or value is pd.NA:
        return (2, 0, "")
    return (0, float(value), "") if isinstance(value, numbers.Number) else (1, 0, str(value))


def study_table(runs: Sequence[dict[str, Any]], x: str, split: str, metrics: Sequence[str], resamples: int,
                level: float, seed: int, protocols: Sequence[str] = ("likelihood",),
                frames: dict[tuple, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per run, protocol and metric: its statistic and the paired difference against the
    run of the same series at the smallest x, or against the reference run of the same dataset,
    selection, prompt and budget when the runs hold one (`"reference": true`), under the same
    protocol and metric. `frames`: the runs' `run_frames`, when the caller has read them already."""
    if x not in AXES:
        raise ValueError(f"x must be one of {AXES}, got {x!r}")
    if frames is None:
        frames = run_frames(runs, split, protocols, metrics)
    reference_labels = {label_key(r) for r in runs if r.get("reference")}
    reference_keys = {key for key in frames if key[:len(LABELS)] in reference_labels}
    position = KEY.index(x)

    def matching(key: tuple) -> tuple:  # what a run shares with its reference run
        return tuple(key[KEY.index(n)] for n in ("dataset", "selection", "prompt", "budget", "protocol", "metric"))

    first: dict[tuple, tuple] = {}
    for key in frames:
        series = series_key(key, x)
        if key not in reference_keys and (series not in first
                                          or sort_value(key[position]) < sort_value(first[series][position])):
            first[series] = key
    by_match = {matching(key): key for key in reference_keys}
    rows = []
    protocol_at = KEY.index("protocol")
    for key in sorted(frames, key=lambda k: tuple(protocols.index(v) if i == protocol_at else sort_value(v)
                                                  for i, v in enumerate(k))):
        value, lo, hi = estimate(key[-1], frames[key], resamples, level, seed)
        is_reference = key in reference_keys
        ref = None if is_reference else (by_match.get(matching(key)) if reference_keys else first[series_key(key, x)])
        if reference_keys and ref is None and not is_reference:
            raise ValueError(f"study run {dict(zip(KEY, key))} has no reference run of the same dataset, "
                             "selection, prompt and budget")
        delta = (paired_delta(key[-1], frames[key], frames[ref], resamples, level, seed)
                 if ref is not None and ref != key else (np.nan,) * 3)
        rows.append((*key, is_reference, value, len(frames[key]), lo, hi, *delta))
    table = pd.DataFrame(rows, columns=SCHEMA.names[:-len(COST_COLUMNS)])
    return table.astype({c: "Int64" for c in INTEGER_AXES})


def with_costs(table: pd.DataFrame, runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The table with each run's seed count and mean training cost (`training_costs`)."""
    costs = training_costs(runs)
    rows = [costs.get(normal_key(row), (1, np.nan, np.nan, np.nan))
            for row in table[list(LABELS)].itertuples(index=False)]
    extra = pd.DataFrame(rows, columns=list(COST_COLUMNS), index=table.index)
    return pd.concat([table, extra], axis=1).astype({"n_seeds": "Int64"})[SCHEMA.names]


def evaluated_samples(frames: dict[tuple, pd.DataFrame]) -> dict[tuple[str, str], pd.Index]:
    """(dataset, protocol) -> the samples the study's runs were scored on (generation and grounded
    decode a seeded subset of the split; the likelihood protocols score all of it)."""
    where = KEY.index("protocol")
    samples: dict[tuple[str, str], pd.Index] = {}
    for key, frame in frames.items():
        here = (key[0], key[where])
        samples[here] = frame.index if here not in samples else samples[here].union(frame.index)
    return samples


def baseline_values(paths: Sequence[str], split: str, metrics: Sequence[str], resamples: int, level: float,
                    seed: int, protocols: Sequence[str] = ("likelihood",),
                    samples: dict[tuple[str, str], pd.Index] | None = None) -> pd.DataFrame:
    """dataset, method, protocol, metric, value, ci_low, ci_high of the baselines (random,
    popularity, SASRec) on `split`, for each of `protocols`: their ranking of the same items (the
    candidate sets for the likelihood protocols, all items for grounded; workflow.protocol_table.popularity_protocol),
    on the samples the runs were scored on under that protocol when `samples` says them
    (`evaluated_samples`), so a line and the runs it is read against share their samples."""
    rows = []
    for path in paths:
        for (dataset, method, _, ranking, metric), frame in metric_frames(read_metrics([path]), split=split).items():
            if metric not in metrics or method not in BASELINES:
                continue
            for protocol in protocols:
                if popularity_protocol(protocol) != ranking:
                    continue
                ids = None if samples is None else samples.get((dataset, protocol))
                here = frame if ids is None else frame[frame.index.isin(ids)]
                if len(here):
                    rows.append((dataset, method, protocol, metric, *estimate(metric, here, resamples, level, seed)))
    return pd.DataFrame(rows, columns=["dataset", "method", "protocol", "metric", "value", "ci_low", "ci_high"])


def series_label(row: pd.Series, x: str) -> str:
    """`dmpo open k3 e1`: the method and the series' other axis values, each by its run-name flag, in
    the name's order."""
    parts = [row["method"]] + ([row["prompt"]] if x != "prompt" else [])
    for a in GRID_AXES:
        if a.flag and a.name != x and not pd.isna(row[a.name]):
            # as the run name spells it (a column with gaps holds its ints as floats: back to the axis's kind)
            parts.append(f"{a.flag}{value_text(a, a.kind(row[a.name]))}")
    return " ".join(parts)


def panels(table: pd.DataFrame) -> list[tuple]:
    """The (dataset, selection, protocol, metric) of each table and plot panel, the protocols in the
    study's order (the table's `protocol` column is ordered by it), the metrics alphabetical."""
    order = {p: i for i, p in enumerate(dict.fromkeys(table["protocol"]))}
    keys = table.groupby(["dataset", "selection", "protocol", "metric"], sort=False).groups
    return sorted(keys, key=lambda k: (k[0], k[1], order[k[2]], k[3]))


def markdown(name: str, table: pd.DataFrame, baselines: pd.DataFrame, x: str, split: str, resamples: int,
             level: float) -> str:
    lines = [f"# Study `{name}`: against {x} ({split} split)", "",
             f"Point estimate [{level:.0%} bootstrap interval over {split} samples, {resamples} resamples]; "
             + ("Δ = paired bootstrap difference against the reference run (listed under each table)."
              if table["is_reference"].any() else
              f"Δ = paired bootstrap difference against the same series at the smallest {x}."), ""]
    if "n_seeds" not in table.columns:  # a table without with_costs: one seed, no cost records
        table = table.assign(n_seeds=1, train_seconds=np.nan, train_cpu_seconds=np.nan, train_max_rss_mb=np.nan)
    seeds = int(table["n_seeds"].max()) if table["n_seeds"].notna().any() else 1
    if seeds > 1:
        lines[-1:-1] = [f"Pooled over {seeds} training seeds: each sample's values averaged over the seeds, "
                        "then bootstrapped over samples (paired differences likewise).", ""]
    groups = table.groupby(["dataset", "selection", "protocol", "metric"], sort=False)
    for dataset, selection, protocol, metric in panels(table):
        part = groups.get_group((dataset, selection, protocol, metric))
        references = part[part["is_reference"]]
        part = part[~part["is_reference"]]
        xs = sorted(part[x].dropna().unique(), key=sort_value)
        lines += [f"## {dataset}, selection {selection}: {protocol} {metric} (n = {int(part['n'].max())})", "",
                  "| run | " + " | ".join(f"{x}={v}" for v in xs) + " |", "|---|" + "---|" * len(xs)]
        part = part.assign(series=part.apply(series_label, axis=1, x=x))
        for series, rows in part.groupby("series", sort=False):
            by_x = rows.set_index(x)
            cells = []
            for v in xs:
                if v not in by_x.index:
                    cells.append("–")
                    continue
                r = by_x.loc[v]
                cell = f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                if np.isfinite(r["delta"]):
                    cell += f" Δ {r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"
                cells.append(cell)
            lines.append(f"| {series} | " + " | ".join(cells) + " |")
        if len(references):
            lines += ["", "Reference: " + "; ".join(
                f"{series_label(r, '')} {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                for _, r in references.iterrows())]
        here = baselines[(baselines["dataset"] == dataset) & (baselines["protocol"] == protocol)
                         & (baselines["metric"] == metric)]
        if len(here):
            lines += ["", "Baselines: " + "; ".join(
                f"{r.method} {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in here.itertuples())]
        lines.append("")
    costs = table.drop_duplicates(list(LABELS)).dropna(subset=["train_seconds"])
    if len(costs):
        lines += ["## Training cost", "", "Mean over seeds of each run's training job (Snakemake benchmark): "
                  "wall seconds, CPU seconds (the fair comparison when jobs share the machine) and peak "
                  "resident memory.", "", "| run | seconds | CPU seconds | peak memory (MB) |", "|---|---:|---:|---:|"]
        for _, r in costs.iterrows():
            lines.append(f"| {series_label(r, '')} | {r['train_seconds']:.0f} | {r['train_cpu_seconds']:.0f} | "
                         f"{r['train_max_rss_mb']:.0f} |")
        lines.append("")
    return "\n".join(lines)


BASELINE_STYLE = dict(zip(BASELINES, (":", "--", "-.")))  # a line style per baseline, in their order


def plot(table: pd.DataFrame, baselines: pd.DataFrame, x: str, out: str | Path) -> None:
    """One panel per metric (columns) and (dataset, selection, protocol) (rows): each series
    against x with its intervals; the baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    shown = panels(table)
    row_keys = list(dict.fromkeys(panel[:3] for panel in shown))
    cols = max(sum(panel[:3] == key for panel in shown) for key in row_keys)
    fig, axes = plt.subplots(len(row_keys), cols, figsize=(5.2 * cols, 4.0 * len(row_keys)), squeeze=False)
    for row, key in enumerate(row_keys):  # a row with fewer metrics leaves its last panels empty
        for ax in axes[row][sum(panel[:3] == key for panel in shown):]:
            ax.set_visible(False)
    numeric = x not in ("prompt", "gate")
    at = {panel: axes[row_keys.index(panel[:3])][[p for p in shown if p[:3] == panel[:3]].index(panel)]
          for panel in shown}
    for (dataset, selection, protocol, metric), ax in at.items():
        here = table[(table["dataset"] == dataset) & (table["selection"] == selection)
                     & (table["protocol"] == protocol) & (table["metric"] == metric)]
        for _, r in here[here["is_reference"]].iterrows():
            ax.axhline(r["value"], color="black", linewidth=1.2, label=series_label(r, ""))
            ax.axhspan(r["ci_low"], r["ci_high"], color="black", alpha=0.06)
        here = here[~here["is_reference"]]
        here = here.assign(series=here.apply(series_label, axis=1, x=x))
        xs = sorted(here[x].dropna().unique(), key=sort_value)
        names = list(dict.fromkeys(here["series"]))
        for i, series in enumerate(names):
            rows = here[here["series"] == series].sort_values(x, key=lambda c: c.map(sort_value))
            where = rows[x].astype(float).to_numpy() if numeric else rows[x].map(xs.index).to_numpy(float)
            # series side by side around each x, so equal values do not hide each other
            shift = (i - (len(names) - 1) / 2)
            where = where * 1.04 ** shift if numeric else where + 0.05 * shift
            err = np.vstack([rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]])
            ax.errorbar(where, rows["value"], yerr=np.nan_to_num(err), marker="o", capsize=3, label=series)
        for r in baselines[(baselines["dataset"] == dataset) & (baselines["protocol"] == protocol)
                           & (baselines["metric"] == metric)].itertuples():
            ax.axhline(r.value, color="grey", linestyle=BASELINE_STYLE.get(r.method, "--"), label=r.method)
        if numeric:
            values = [float(v) for v in xs]
            if len(values) > 1 and max(values) / max(min(values), 1e-9) >= 4:
                ax.set_xscale("log", base=2)
            ax.set_xticks(values, [str(v) for v in xs])
        else:
            ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(x)
        ax.set_ylabel(f"{metric} ({protocol})")
        ax.set_title(f"{dataset} / {selection}: {protocol} {metric}")
    legend = {}  # every panel's series, references and baselines, once each
    for ax in at.values():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    last_of_first_row = [panel for panel in shown if panel[:3] == row_keys[0]][-1]
    at[last_of_first_row].legend(legend.values(), legend.keys(), frameon=False, fontsize="small",
                                 loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def check_spec(spec: dict[str, Any]) -> None:
    for key in ("name", "x", "split", "protocols", "metrics", "bootstrap", "ci", "runs"):
        if key not in spec:
            raise KeyError(f"--spec: missing key '{key}'")
    if not spec["runs"]:
        raise ValueError(f"--spec: study {spec['name']!r} has no runs")
    for run in spec["runs"]:
        missing = [k for k in ("dataset", "selection", "method", "path") if k not in run]
        if missing:
            raise KeyError(f"--spec: a run of study {spec['name']!r} lacks {missing}: {run}")


def main(argv=None) -> int:
    p = cli.parser("A study: runs at the points of a grid of config variants -> table and plot.")
    p.add_argument("--spec", type=cli.json_arg, required=True, help="JSON (see the module docstring)")
    p.add_argument("--baselines", nargs="*", default=[], help="metrics Parquets holding random, popularity, sasrec")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-parquet", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-png", required=True)

    def run(args):
        spec = args.spec
        check_spec(spec)
        resamples, level = int(spec["bootstrap"]), float(spec["ci"])
        protocols = spec["protocols"]
        frames = run_frames(spec["runs"], spec["split"], protocols, spec["metrics"])  # read once, used twice
        table = with_costs(study_table(spec["runs"], spec["x"], spec["split"], spec["metrics"], resamples, level,
                                       args.seed, protocols, frames), spec["runs"])
        scored = evaluated_samples(frames)
        baselines = baseline_values(args.baselines, spec["split"], spec["metrics"], resamples, level, args.seed,
                                    protocols, scored)
        write_parquet(table, args.out_parquet, schema=SCHEMA, config=spec, seed=args.seed,
                      inputs=[r["path"] for r in spec["runs"]])
        with atomic_path(args.out_md, suffix=".md") as tmp:
            tmp.write_text(markdown(spec["name"], table, baselines, spec["x"], spec["split"], resamples, level))
        plot(table, baselines, spec["x"], args.out_png)
        log.info("study %s: %d rows from %d runs", spec["name"], len(table), len(spec["runs"]))

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
