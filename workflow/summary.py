"""The summary table: every metric of every (dataset, method, selection, protocol) on the test split,
with a seeded bootstrap confidence interval and a paired bootstrap comparison against `sft`.

Input: the long per-sample metrics Parquets (dataset, method, selection, protocol, split, sample_id,
user_id, metric, value) of the LLM methods and the surrogate. Only split `test` is summarised.

Statistics (point estimate on all samples; CI = percentile interval of the statistic over
`bootstrap` resamples of the test samples drawn with replacement):
- most metrics: the mean over samples;
- `auc`: averaged per user first, then over users (DESIGN section 6);
- `hr@1_valid` (generation): a ratio, sum(hit) / sum(valid), recomputed on each resample (resamples
  without a valid answer are left out of the interval); no row when no answer at all is valid.

Paired comparison: each row is compared with the `sft` row of the same dataset, protocol and metric,
on the sample ids both have, with the same resamples applied to both sides (a paired bootstrap);
`delta_vs_sft` = statistic(row) - statistic(sft). The sft reference is the sft run of the same
selection when one exists, else the first sft selection (in `selections` of the spec when given,
else alphabetical) -- so `base` (selection `none`) and the surrogate (selection `all`, unless sft
was also trained on `all`) are compared with the default sft run. Column `sft_selection` names
the reference; sft rows themselves carry no delta.

Resamples are drawn from a fresh generator seeded with `seed` for every statistic, so a figure
does not depend on which other files were summarised, and methods evaluated on the same samples
share their resamples.
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

log = logging.getLogger(__name__)

SPLIT = "test"
REFERENCE = "sft"
GROUP = ["dataset", "method", "selection", "protocol"]
METRICS_COLUMNS = GROUP + ["split", "sample_id", "user_id", "metric", "value"]
RATIO_METRICS = {"hr@1_valid": ("hit", "valid")}  # generation: correct answers / valid answers
PER_USER_METRICS = {"auc"}

SCHEMA = pa.schema([
    ("dataset", pa.string()), ("method", pa.string()), ("selection", pa.string()),
    ("protocol", pa.string()), ("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("sft_selection", pa.string()),
    ("delta_vs_sft", pa.float64()), ("delta_ci_low", pa.float64()), ("delta_ci_high", pa.float64()),
])


def read_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate per-sample metrics files; a missing column or a duplicated row names the file."""
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        missing = [c for c in METRICS_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (expected {METRICS_COLUMNS})")
        frame = frame[METRICS_COLUMNS].astype({c: str for c in METRICS_COLUMNS if c != "value"})
        frame["value"] = frame["value"].astype("float64")
        dup = frame.duplicated(GROUP + ["split", "sample_id", "metric"])
        if dup.any():
            row = frame[dup].iloc[0]
            raise ValueError(f"{path}: duplicated metric row {row[GROUP + ['split', 'sample_id', 'metric']].to_dict()}")
        frames.append(frame)
    if not frames:
        raise ValueError("no metrics files given")
    metrics = pd.concat(frames, ignore_index=True)
    dup = metrics.duplicated(GROUP + ["split", "sample_id", "metric"])
    if dup.any():
        row = metrics[dup].iloc[0]
        raise ValueError(f"the same metric row occurs in two files: {row[GROUP + ['sample_id', 'metric']].to_dict()}")
    return metrics


def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] counts: how often each sample is drawn in each resample (from an index matrix)."""
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    flat = (np.arange(resamples)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def metric_columns(metric: str) -> list[str]:
    return list(RATIO_METRICS.get(metric, (metric,)))


def statistic(metric: str, weights: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    """The metric's statistic under each row of sample weights [R, n]; `frame` is sorted by user."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric in RATIO_METRICS:
            num, den = (frame[c].to_numpy(np.float64) for c in RATIO_METRICS[metric])
            return (weights @ num) / (weights @ den)  # NaN when a resample holds no valid answer
        values = frame[metric].to_numpy(np.float64)
        if metric in PER_USER_METRICS:
            users = frame["user_id"].to_numpy()
            starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
            user_weight = np.add.reduceat(weights, starts, axis=1)
            user_sum = np.add.reduceat(weights * values, starts, axis=1)
            per_user = np.where(user_weight > 0, user_sum / np.where(user_weight > 0, user_weight, 1), np.nan)
            return np.nanmean(per_user, axis=1)
        return (weights @ values) / weights.sum(axis=1)


def interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def estimate(metric: str, frame: pd.DataFrame, resamples: int, level: float, seed: int) -> tuple[float, float, float]:
    value = float(statistic(metric, np.ones((1, len(frame))), frame)[0])
    if resamples == 0:
        return value, float("nan"), float("nan")
    return (value, *interval(statistic(metric, bootstrap_weights(len(frame), resamples, seed), frame), level))


def paired_delta(metric: str, frame: pd.DataFrame, reference: pd.DataFrame, resamples: int, level: float,
                 seed: int) -> tuple[float, float, float]:
    """statistic(frame) - statistic(reference) on their common samples, both under the same resamples."""
    common = frame.index.intersection(reference.index)
    if len(common) == 0:
        return float("nan"), float("nan"), float("nan")
    left = sort_by_user(frame.loc[common])
    right = reference.loc[left.index]
    right = right.assign(user_id=left["user_id"].to_numpy())
    ones = np.ones((1, len(left)))
    delta = float(statistic(metric, ones, left)[0] - statistic(metric, ones, right)[0])
    if resamples == 0:
        return delta, float("nan"), float("nan")
    weights = bootstrap_weights(len(left), resamples, seed)
    return (delta, *interval(statistic(metric, weights, left) - statistic(metric, weights, right), level))


def sort_by_user(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by (user_id, sample_id): a user's samples are contiguous (per-user statistics) and the
    order, hence the resamples, is the same whichever file the samples came from."""
    return frame.rename_axis("sample_id").sort_values(["user_id", "sample_id"], kind="stable")


def metric_frames(metrics: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """(dataset, method, selection, protocol, metric) -> per-sample frame indexed by sample_id, sorted by
    user, holding user_id and the metric's column(s); derived ratio metrics are added here."""
    test = metrics[metrics["split"] == SPLIT]
    frames = {}
    for key, group in test.groupby(GROUP, sort=False):
        wide = group.pivot(index="sample_id", columns="metric", values="value")
        wide.columns.name = None
        users = group.drop_duplicates("sample_id").set_index("sample_id")["user_id"]
        wide.insert(0, "user_id", users.reindex(wide.index))
        names = list(dict.fromkeys(group["metric"]))
        for derived, needed in RATIO_METRICS.items():
            if all(c in names for c in needed) and derived not in names:
                names.insert(names.index(needed[0]) + 1, derived)
        for metric in names:
            cols = metric_columns(metric)
            frame = wide[["user_id", *cols]].dropna()
            if len(frame) < len(wide):
                log.warning("%s %s: %d samples without a finite value left out", key, metric, len(wide) - len(frame))
            if metric in RATIO_METRICS and frame[RATIO_METRICS[metric][1]].sum() == 0:
                log.warning("%s %s: undefined (no denominator, e.g. no valid answer), left out", key, metric)
                continue
            if len(frame):
                frames[(*key, metric)] = sort_by_user(frame)
    return frames


def reference_key(key: tuple, keys: Sequence[tuple], selections: Sequence[str] | None) -> tuple | None:
    dataset, method, selection, protocol, metric = key
    if method == REFERENCE:
        return None
    available = [k[2] for k in keys if k[0] == dataset and k[1] == REFERENCE and k[3] == protocol and k[4] == metric]
    if not available:
        return None
    if selection in available:
        chosen = selection
    else:
        order = [s for s in (selections or []) if s in available] + sorted(available)
        chosen = order[0]
    return (dataset, REFERENCE, chosen, protocol, metric)


def summarize(metrics: pd.DataFrame, resamples: int, level: float, seed: int,
              selections: Sequence[str] | None = None) -> pd.DataFrame:
    frames = metric_frames(metrics)
    rows = []
    for key, frame in frames.items():
        value, lo, hi = estimate(key[4], frame, resamples, level, seed)
        ref = reference_key(key, list(frames), selections)
        delta = paired_delta(key[4], frame, frames[ref], resamples, level, seed) if ref else (np.nan,) * 3
        rows.append((*key, value, len(frame), lo, hi, ref[2] if ref else None, *delta))
    return pd.DataFrame(rows, columns=SCHEMA.names).astype({"n": "int64"})


def delta_marker(row: pd.Series) -> str:
    """▲ / ▼ when the paired interval of the difference to sft lies above / below zero, else ""."""
    if np.isfinite(row["delta_ci_low"]) and row["delta_ci_low"] > 0:
        return "▲"
    if np.isfinite(row["delta_ci_high"]) and row["delta_ci_high"] < 0:
        return "▼"
    return ""


def format_cell(row: pd.Series) -> str:
    if not np.isfinite(row["value"]):
        return "n/a"
    cell = f"{row['value']:.3f}"
    if np.isfinite(row["ci_low"]):
        cell += f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    marker = delta_marker(row)
    return f"{cell} {marker}" if marker else cell


def wide_table(table: pd.DataFrame, cell=format_cell) -> pd.DataFrame:
    """One protocol's summary rows as rows `method / selection` by metric columns (in first-seen
    order), each cell `cell(row)`."""
    table = table.assign(row=table["method"] + " / " + table["selection"], cell=table.apply(cell, axis=1))
    wide = table.pivot(index="row", columns="metric", values="cell")
    return wide.reindex(index=list(dict.fromkeys(table["row"])), columns=list(dict.fromkeys(table["metric"])))


def markdown(summary: pd.DataFrame, resamples: int, level: float, seed: int) -> str:
    """Per dataset, one table per protocol (rows method / selection, columns metrics): one table with
    every protocol:metric column would be ~30 columns wide, too wide to read."""
    parts = ["# Summary", ""]
    for dataset, by_dataset in summary.groupby("dataset", sort=False):
        parts += [f"## {dataset}", ""]
        for protocol, table in by_dataset.groupby("protocol", sort=False):
            wide = wide_table(table)
            parts += [f"### {protocol} (n = {int(table['n'].max())} test samples)", ""]
            header = ["method / selection", *wide.columns]
            parts.append("| " + " | ".join(header) + " |")
            parts.append("|" + "---|" * len(header))
            for row, cells in wide.iterrows():
                parts.append("| " + " | ".join([row, *(c if isinstance(c, str) else "" for c in cells)]) + " |")
            parts.append("")
    parts += [
        "Legend: each cell is the statistic on the test split and its "
        f"{level:.0%} percentile bootstrap interval ({resamples} resamples of the test samples, seed {seed}). "
        "▲ / ▼: the paired bootstrap interval of the difference to `sft` (same dataset, protocol and metric; "
        "the same selection when sft has it, else the default sft run) lies above / below zero. "
        "likelihood: candidates ranked by sum log-prob of the title; likelihood_norm: by log-prob per token; "
        "auc: per user, then averaged over users. generation: greedy answer to the candidate prompt; "
        "valid = ValidRatio (exactly one candidate title in the answer), hit = HR@1 over all samples, "
        "hr@1_valid = HR@1 over valid answers only (hits / valid). grounded: the greedy answer to the open "
        "prompt embedded by the base model, all items ranked by L2 distance. full_ranking: the surrogate "
        "ranking all items.",
        "",
    ]
    return "\n".join(parts)


def main(argv=None) -> int:
    p = cli.parser("Summarise per-sample metrics into one table with bootstrap intervals.")
    p.add_argument("--metrics", nargs="+", required=True, help="per-sample metrics Parquet files")
    p.add_argument("--spec", type=cli.json_arg, required=True,
                   help='JSON: {"bootstrap": B, "ci": 0.95, "selections": [optional sft selection order]}')
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-parquet", required=True)
    p.add_argument("--out-md", required=True)

    def run(args):
        spec = args.spec
        for key in ("bootstrap", "ci"):
            if key not in spec:
                raise KeyError(f"--spec: missing key '{key}'")
        if not 0 < spec["ci"] < 1 or int(spec["bootstrap"]) < 0:
            raise ValueError(f"--spec: need 0 < ci < 1 and bootstrap >= 0, got {spec}")
        metrics = read_metrics(args.metrics)
        summary = summarize(metrics, int(spec["bootstrap"]), float(spec["ci"]), args.seed, spec.get("selections"))
        if summary.empty:
            log.warning("no %s rows in %d metrics files", SPLIT, len(args.metrics))
        write_parquet(summary, args.out_parquet, schema=SCHEMA, config=spec, seed=args.seed,
                      inputs=[str(p) for p in args.metrics])
        with atomic_path(args.out_md, suffix=".md") as tmp:
            tmp.write_text(markdown(summary, int(spec["bootstrap"]), float(spec["ci"]), args.seed))
        log.info("%d summary rows from %d files", len(summary), len(args.metrics))

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
