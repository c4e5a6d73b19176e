"""The summary table: every metric of every (dataset, method, selection, protocol) on the test split,
with a seeded bootstrap confidence interval and paired bootstrap comparisons against `sft`, `base`
and `popularity`.

Input: the long per-sample metrics Parquets (dataset, method, selection, protocol, split, sample_id,
user_id, metric, value) of the LLM runs, the surrogate and the baselines. Only split `test` is
summarised. LLM runs are named `{method}-{prompt}[-...]` (`sft-open`, `dmpo-candidate-k7`); other
rows (`sasrec`, `popularity`, `random`) have no prompt.

Statistics (point estimate on all samples; CI = percentile interval of the statistic over
`bootstrap` resamples of the test samples drawn with replacement):
- most metrics: the mean over samples;
- `auc`: averaged per user first, then over users (DESIGN section 6);
- `hr@1_valid` (generation): a ratio, sum(hit) / sum(valid), recomputed on each resample (resamples
  without a valid answer are left out of the interval); no row when no answer at all is valid.

Paired comparisons: a row is compared with a reference row of the same dataset and metric, on the
sample ids both have, with the same resamples applied to both sides (a paired bootstrap);
`delta_vs_{R}` = statistic(row) - statistic(reference R), with its interval. References R:
- `sft`: for an LLM run with prompt P, the run `sft-P` (same protocol); not for `sft-P` itself;
- `base`: for an LLM run with prompt P, the untuned `base-P`; not for `base-P` itself;
- `strategy`: for an LLM run on a selection other than the first (`selections` of the spec, else
  alphabetical), the same run on the first: DEALRec's selection against the random one at the
  same budget;
- `popularity`: for every row but the baselines themselves; likelihood, likelihood_norm and
  likelihood_reversed are read against popularity's candidate ranking (`likelihood`), grounded and
  full_ranking against its `full_ranking`; generation (free or constrained) has no popularity
  counterpart.
- `sasrec`: for every whole-catalogue row (`CATALOGUE_PROTOCOLS`: full_ranking, catalogue,
  grounded) but SASRec's own, SASRec's full ranking; summary.md's whole-catalogue table shows them.
Of a reference's selections the row's own is taken when present, else the first (in `selections` of
the spec when given, else alphabetical): `base-P` (selection `none`) is compared with the default
sft run. Column `{R}_selection` names the reference's selection (null: no comparison).

Cross-domain transfer (workflow/transfer.py): a transferred run's metrics carry `trained_on`, the
dataset its adapter was trained on, beside `dataset`, the one it was evaluated on; every other row
has trained_on = dataset. Transferred rows are summarised per trained_on and compared with the
dataset's own `base-P` and `popularity` rows (never trained, so there is nothing to transfer) and
with the sft reference transferred from the same dataset (the sft run trained on trained_on and
evaluated on dataset, when the `transfer` entry lists it; else no sft comparison).

Training seeds (config `seeds`, run names' -s; workflow/runs.py): runs that differ only by their
training seed are one figure. Its row (column `seed` null, method = the name without -s) gives the
mean over the seeds of each seed's statistic (`value`), their sample standard deviation (`seed_sd`),
`n_seeds`, and the bootstrap interval of that mean: each resample of the test samples applied to every
seed (they are scored on the same samples) and the seeds' statistics averaged per resample. A
reference is found by name without -s, then paired seed by seed (a run at seed 43 against sft at
seed 43; every seed against the one base-P or popularity row; base-P, untrained, against sft at every
seed), and the differences pooled the same way. Such a figure also has one row per seed (`seed`
set, n_seeds 1); a figure of one run has its one row (seed null, n_seeds 1), as without `seeds`.
`seed` (the command line's) is the bootstrap's and the training seed of runs without -s.

Resamples are drawn from a fresh generator seeded with `seed` for every statistic, so a figure
does not depend on which other files were summarised, and methods evaluated on the same samples
share their resamples.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow import baseline_table, cli, runs
from workflow.io import atomic_path, write_parquet
from workflow.protocol_table import PROTOCOLS, headlines, popularity_protocol

log = logging.getLogger(__name__)

SPLIT = "test"
REFERENCES = ("sft", "base", "popularity", "strategy", "sasrec")
# the protocols that rank the whole catalogue (the whole-catalogue table; read against SASRec's full
# ranking): those the protocol table reads against popularity's full ranking
CATALOGUE_PROTOCOLS = tuple(p for p in PROTOCOLS if popularity_protocol(p) == "full_ranking")
# the whole-catalogue table's metrics: those protocols' headline metrics (hr@10, ndcg@10)
CATALOGUE_METRICS = tuple(dict.fromkeys(m for p in CATALOGUE_PROTOCOLS for m in PROTOCOLS[p].headline))
BASELINES = tuple(baseline_table.BASELINES)  # listed first in the tables
NO_POPULARITY = set(BASELINES) - {baseline_table.SURROGATE}
GROUP = ["dataset", "method", "selection", "protocol"]
METRICS_COLUMNS = GROUP + ["split", "sample_id", "user_id", "metric", "value"]
TRAINED_ON = "trained_on"  # the dataset a transferred run was trained on (else the dataset itself)
UNIQUE = GROUP + [TRAINED_ON, "split", "sample_id", "metric"]  # one value per sample
RATIO_METRICS = {"hr@1_valid": ("hit", "valid")}  # generation: correct answers / valid answers
PER_USER_METRICS = {"auc"}

SCHEMA = pa.schema([
    ("dataset", pa.string()), ("trained_on", pa.string()), ("method", pa.string()), ("selection", pa.string()),
    ("protocol", pa.string()), ("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    *[field for r in REFERENCES for field in (
        (f"{r}_selection", pa.string()), (f"delta_vs_{r}", pa.float64()),
        (f"delta_vs_{r}_ci_low", pa.float64()), (f"delta_vs_{r}_ci_high", pa.float64()))],
    # training seeds (config `seeds`): null seed = the figure's row, pooling n_seeds runs (seed_sd:
    # the sample sd of their values); a figure of several seeds also has one row per seed
    ("seed", pa.int64()), ("n_seeds", pa.int64()), ("seed_sd", pa.float64()),
])


def run_prompt(method: str) -> str | None:
    """The prompt of an LLM run `{method}-{prompt}[-...]`; None for other rows (sasrec, baselines)."""
    try:
        return runs.parse(method).prompt
    except ValueError:
        return None


def read_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate per-sample metrics files; a missing column or a duplicated row names the file."""
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        missing = [c for c in METRICS_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (expected {METRICS_COLUMNS})")
        columns = METRICS_COLUMNS + [TRAINED_ON]
        frame = with_trained_on(frame)[columns].astype({c: str for c in columns if c != "value"})
        frame["value"] = frame["value"].astype("float64")
        dup = frame.duplicated(UNIQUE)
        if dup.any():
            row = frame[dup].iloc[0]
            raise ValueError(f"{path}: duplicated metric row {row[UNIQUE].to_dict()}")
        frames.append(frame)
    if not frames:
        raise ValueError("no metrics files given")
    metrics = pd.concat(frames, ignore_index=True)
    dup = metrics.duplicated(UNIQUE)
    if dup.any():
        row = metrics[dup].iloc[0]
        raise ValueError(f"the same metric row occurs in two files: {row[UNIQUE].to_dict()}")
    return metrics


def with_trained_on(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics with a trained_on column: a transferred run's carry it; for the others (no column,
    or null) it is the dataset itself."""
    if TRAINED_ON not in metrics.columns:
        return metrics.assign(**{TRAINED_ON: metrics["dataset"]})
    return metrics.assign(**{TRAINED_ON: metrics[TRAINED_ON].fillna(metrics["dataset"])})


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


def estimate_draws(metric: str, frame: pd.DataFrame, resamples: int, seed: int) -> tuple[float, np.ndarray]:
    """The statistic on all samples, and under each of `resamples` bootstrap resamples."""
    value = float(statistic(metric, np.ones((1, len(frame))), frame)[0])
    if resamples == 0:
        return value, np.empty(0)
    return value, statistic(metric, bootstrap_weights(len(frame), resamples, seed), frame)


def estimate(metric: str, frame: pd.DataFrame, resamples: int, level: float, seed: int) -> tuple[float, float, float]:
    value, draws = estimate_draws(metric, frame, resamples, seed)
    return (value, *interval(draws, level))


def paired_draws(metric: str, frame: pd.DataFrame, reference: pd.DataFrame, resamples: int,
                 seed: int) -> tuple[float, np.ndarray]:
    """statistic(frame) - statistic(reference) on their common samples, and under each resample,
    the same resamples on both sides."""
    common = frame.index.intersection(reference.index)
    if len(common) == 0:
        return float("nan"), np.empty(0)
    left = sort_by_user(frame.loc[common])
    right = reference.loc[left.index]
    right = right.assign(user_id=left["user_id"].to_numpy())
    ones = np.ones((1, len(left)))
    delta = float(statistic(metric, ones, left)[0] - statistic(metric, ones, right)[0])
    if resamples == 0:
        return delta, np.empty(0)
    weights = bootstrap_weights(len(left), resamples, seed)
    return delta, statistic(metric, weights, left) - statistic(metric, weights, right)


def paired_delta(metric: str, frame: pd.DataFrame, reference: pd.DataFrame, resamples: int, level: float,
                 seed: int) -> tuple[float, float, float]:
    """statistic(frame) - statistic(reference) on their common samples, with its paired interval."""
    delta, draws = paired_draws(metric, frame, reference, resamples, seed)
    return (delta, *interval(draws, level))


def sort_by_user(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by (user_id, sample_id): a user's samples are contiguous (per-user statistics) and the
    order, hence the resamples, is the same whichever file the samples came from."""
    return frame.rename_axis("sample_id").sort_values(["user_id", "sample_id"], kind="stable")


def metric_frames(metrics: pd.DataFrame, split: str = SPLIT) -> dict[tuple, pd.DataFrame]:
    """(dataset, method, selection, protocol, metric) -> per-sample frame of `split` indexed by
    sample_id, sorted by user, holding user_id and the metric's column(s); derived ratio metrics
    are added here."""
    test = metrics[metrics["split"] == split]
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


def reference_runs(method: str, protocol: str, reference: str) -> list[tuple[str, str]]:
    """(method, protocol) of the rows that `reference` may compare a (method, protocol) row with,
    the first present one is taken: popularity on the protocol ranking the same items; base-P for
    a run of prompt P; for sft, the sft run of the row's prompt and budget (workflow/runs.py
    Run.sft: what a preference or SOFT run started from, what LLaRA and iLoRA are read against),
    then sft-P."""
    if reference == "sasrec":
        # SASRec's full ranking: what every whole-catalogue row is read against
        if method == "sasrec" or protocol not in CATALOGUE_PROTOCOLS:
            return []
        return [("sasrec", "full_ranking")]
    if reference == "popularity":
        # popularity ranks the candidate sets and all items: a protocol is read against the one
        # ranking the same items (workflow/llm/protocols.py)
        if method in NO_POPULARITY or popularity_protocol(protocol) is None:
            return []
        return [("popularity", popularity_protocol(protocol))]
    prompt = run_prompt(method)
    if prompt is None:
        return []
    names = [runs.Run(reference, prompt).name]
    if reference == "sft" and runs.parse(method).method not in ("base", "sft"):
        names.insert(0, runs.parse(method).sft().name)
    return [(name, protocol) for name in dict.fromkeys(names) if name != method]


def selections_of(keys: Sequence[tuple], dataset: str, method: str, protocol: str, metric: str) -> list[str]:
    """The selections a run has a figure of (protocol, metric) on."""
    return [k[2] for k in keys if k[:2] == (dataset, method) and k[3:] == (protocol, metric)]


def preferred_selection(available: Sequence[str], selections: Sequence[str] | None,
                        own: str | None = None) -> str | None:
    """`own` when available, else the first of `selections` available, else the first alphabetically."""
    return next((s for s in [own, *(selections or []), *sorted(available)] if s in available), None)


def reference_key(key: tuple, reference: str, keys: Sequence[tuple], selections: Sequence[str] | None) -> tuple | None:
    """The key of the reference row: its selection is the row's own when present, else the first of
    `selections`, else the first alphabetically; None without a comparison."""
    dataset, method, selection, protocol, metric = key
    if reference == "strategy":
        return first_strategy_key(key, keys, selections)
    for run in reference_runs(method, protocol, reference):
        available = selections_of(keys, dataset, run[0], run[1], metric)
        if available:
            return (dataset, run[0], preferred_selection(available, selections, selection), run[1], metric)
    return None


def first_strategy_key(key: tuple, keys: Sequence[tuple], selections: Sequence[str] | None) -> tuple | None:
    """The same LLM run's key on the first selection strategy it has (`selections` order, else
    alphabetical); None when the row is on that selection or is not an LLM run."""
    dataset, method, selection, protocol, metric = key
    if run_prompt(method) is None:
        return None
    first = preferred_selection(selections_of(keys, dataset, method, protocol, metric), selections)
    return None if first in (None, selection) else (dataset, method, first, protocol, metric)


def summarize(metrics: pd.DataFrame, resamples: int, level: float, seed: int,
              selections: Sequence[str] | None = None) -> pd.DataFrame:
    """The summary rows: each dataset's own, then the transferred runs' per dataset they were trained
    on (read against the evaluated dataset's own base, popularity and SASRec rows and their own sft)."""
    metrics = with_trained_on(metrics)
    transferred = metrics[TRAINED_ON] != metrics["dataset"]
    own = metric_frames(metrics[~transferred])
    rows = summary_rows(own, dict.fromkeys(REFERENCES, own), resamples, level, seed, selections)
    for trained_on, group in metrics[transferred].groupby(TRAINED_ON, sort=False):
        frames = metric_frames(group)
        pools = {"sft": frames, "base": own, "popularity": own, "strategy": frames, "sasrec": own}
        rows += summary_rows(frames, pools, resamples, level, seed, selections, trained_on)
    return pd.DataFrame(rows, columns=SCHEMA.names).astype({"n": "int64", "seed": "Int64", "n_seeds": "int64"})


def summary_rows(frames: dict[tuple, pd.DataFrame], pools: dict[str, dict[tuple, pd.DataFrame]], resamples: int,
                 level: float, seed: int, selections: Sequence[str] | None, trained_on: str | None = None) -> list:
    """One row per figure (`seed_figures`: a run, or the runs that differ only by their training seed,
    pooled, with one row per seed beside it), each reference looked up among the figures of its pool
    and paired seed by seed (`seed_pairs`); trained_on None: the frames' own dataset."""
    figures = seed_figures(frames, seed)
    references = {reference: seed_figures(pool, seed) for reference, pool in pools.items()}
    rows = []
    for figure, members in figures.items():
        dataset, name, *rest = figure
        labels = [dataset, trained_on or dataset]
        draws = {training_seed: run_draws(figure, training_seed, frames[key], pools, references, resamples, seed,
                                          selections) for training_seed, key in members.items()}
        if len(members) == 1:  # one run: its own name and figures
            [key] = members.values()
            rows.append([*labels, key[1], *rest, *pooled(list(draws.values()), level), None, 1, np.nan])
            continue
        values = [d.value for d in draws.values()]
        rows.append([*labels, name, *rest, *pooled(list(draws.values()), level), None, len(members),
                     float(np.std(values, ddof=1))])
        rows += [[*labels, name, *rest, *pooled([d], level), training_seed, 1, np.nan]
                 for training_seed, d in draws.items()]
    return rows


def seeded_name(method: str, config_seed: int) -> tuple[str, int | None]:
    """(name without -s, training seed: its -s, else the config's) of a trained LLM run;
    (method, None) for a row without a training seed (base, the baselines, sasrec)."""
    try:
        run = runs.parse(method)
    except ValueError:
        return method, None
    if run.method == "base":
        return method, None
    return run._replace(seed=None).name, config_seed if run.seed is None else run.seed


def seed_figures(frames: dict[tuple, pd.DataFrame], config_seed: int) -> dict[tuple, dict[int | None, tuple]]:
    """Figure (a frame key with the run's name without -s) -> {training seed: the run's frame key}."""
    figures: dict[tuple, dict[int | None, tuple]] = {}
    for key in frames:
        name, training_seed = seeded_name(key[1], config_seed)
        members = figures.setdefault((key[0], name, *key[2:]), {})
        if training_seed in members:
            raise ValueError(f"runs {members[training_seed][1]!r} and {key[1]!r} are one run (training seed "
                             f"{training_seed}); name the config's seed without -s")
        members[training_seed] = key
    return figures


def seed_pairs(training_seed: int | None, reference: dict[int | None, tuple]) -> list[tuple]:
    """The runs of a reference figure that a run at `training_seed` is compared with: the reference's
    one run when it has no training seed (base, the baselines); for a run without one (base-P against
    sft), the reference at every seed; else the reference at the run's own seed (none when missing)."""
    if None in reference:
        return [reference[None]]
    if training_seed is None:
        return list(reference.values())
    return [reference[training_seed]] if training_seed in reference else []


class Draws(NamedTuple):
    """One run's figures before intervals: its statistic and bootstrap draws, and per reference the
    reference's selection (None: no comparison) and the (difference, draws) to each paired run."""
    value: float
    draws: np.ndarray
    n: int
    references: dict[str, tuple[str | None, list[tuple[float, np.ndarray]]]]


def run_draws(figure: tuple, training_seed: int | None, frame: pd.DataFrame,
              pools: dict[str, dict[tuple, pd.DataFrame]], references: dict[str, dict[tuple, dict[int | None, tuple]]],
              resamples: int, seed: int, selections: Sequence[str] | None) -> Draws:
    """A run's statistic and its paired differences to each reference: the reference figure found by
    name (reference_key, names without -s), its runs paired by seed (seed_pairs)."""
    compared = {}
    for reference, figures in references.items():
        ref = reference_key(figure, reference, list(figures), selections)
        paired = seed_pairs(training_seed, figures[ref]) if ref else []
        compared[reference] = (ref[2] if paired else None,
                               [paired_draws(figure[4], frame, pools[reference][key], resamples, seed)
                                for key in paired])
    return Draws(*estimate_draws(figure[4], frame, resamples, seed), len(frame), compared)


def mean_draws(draws: Sequence[np.ndarray]) -> np.ndarray:
    """Bootstrap draws averaged draw by draw over seeds: the seeds are scored on the same test samples,
    so draw r is the same resample for each (empty when they have no common number of draws)."""
    if len({len(d) for d in draws}) != 1:
        return np.empty(0)
    return np.mean(np.vstack(draws), axis=0)


def pooled(members: Sequence[Draws], level: float) -> list:
    """value, n, ci_low, ci_high and per reference (selection, delta, its interval) of the mean over a
    figure's runs (its training seeds): the mean statistic and the interval of the mean draws; the
    paired differences (each seed's run against the reference at its own seed) averaged the same
    way, when every seed has its reference. One run and one reference run: their own figures."""
    row = [float(np.mean([m.value for m in members])), min(m.n for m in members),
           *interval(mean_draws([m.draws for m in members]), level)]
    for reference in REFERENCES:
        if any(m.references[reference][0] is None for m in members):
            row += [None, np.nan, np.nan, np.nan]
            continue
        pairs = [pair for m in members for pair in m.references[reference][1]]
        row += [members[0].references[reference][0], float(np.mean([delta for delta, _ in pairs])),
                *interval(mean_draws([draws for _, draws in pairs]), level)]
    return row


def delta_marker(row: pd.Series, reference: str = "sft") -> str:
    """▲ / ▼ when the paired interval of the difference to `reference` lies above / below zero, else ""."""
    lo, hi = row[f"delta_vs_{reference}_ci_low"], row[f"delta_vs_{reference}_ci_high"]
    if np.isfinite(lo) and lo > 0:
        return "▲"
    if np.isfinite(hi) and hi < 0:
        return "▼"
    return ""


def markers(row: pd.Series) -> str:
    """▲ / ▼ against sft, then † when the row beats popularity (interval above zero)."""
    return delta_marker(row) + ("†" if delta_marker(row, "popularity") == "▲" else "")


def format_cell(row: pd.Series) -> str:
    """`0.145 ± 0.008 (3 seeds) [0.100, 0.200] ▲`: the interval with the point's 3 decimals (fewer would
    print `0.007 [0.01, 0.01]`, an interval that seems not to hold its point)."""
    if not np.isfinite(row["value"]):
        return "n/a"
    cell = f"{row['value']:.3f}" + seed_spread(row)
    if np.isfinite(row["ci_low"]):
        cell += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    marker = markers(row)
    return f"{cell} {marker}" if marker else cell


def seed_spread(row: pd.Series) -> str:
    """` ± 0.012 (3 seeds)`: the seed-to-seed sd of a row pooling several training seeds, else ""."""
    return f" ± {row['seed_sd']:.3f} ({row['n_seeds']} seeds)" if row["n_seeds"] > 1 else ""


def figure_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per figure: a figure of several training seeds by its pooled row (its per-seed rows,
    `seed` set, left out)."""
    return summary[summary["seed"].isna()]


def delta_cell(row: pd.Series, reference: str) -> str:
    """`+0.034 [+0.011, +0.058]`: the paired difference to `reference` and its interval; "" without one."""
    delta, lo, hi = (row[f"delta_vs_{reference}{s}"] for s in ("", "_ci_low", "_ci_high"))
    if not np.isfinite(delta):
        return ""
    return f"{delta:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "")


def row_names(table: pd.DataFrame) -> pd.Series:
    """`method / selection` of each row; a transferred run's (trained_on != dataset) adds
    `(trained on A)`."""
    names = table["method"] + " / " + table["selection"]
    if TRAINED_ON not in table.columns:
        return names
    transferred = table[TRAINED_ON] != table["dataset"]
    return names.where(~transferred, names + " (trained on " + table[TRAINED_ON].astype(str) + ")")


def row_labels(table: pd.DataFrame) -> list[str]:
    """`row_names` of the rows: the baselines first (random, popularity, sasrec), then the others in
    input order."""
    pairs = list(dict.fromkeys(zip(row_names(table), table["method"])))
    pairs.sort(key=lambda p: BASELINES.index(p[1]) if p[1] in BASELINES else len(BASELINES))
    return [label for label, _ in pairs]


def wide_table(table: pd.DataFrame, cell=format_cell) -> pd.DataFrame:
    """One protocol's summary rows as rows `method / selection` (`row_names`, `row_labels` order) by metric
    columns (in first-seen order), each cell `cell(row)`."""
    table = table.assign(row=row_names(table), cell=table.apply(cell, axis=1))
    wide = table.pivot(index="row", columns="metric", values="cell")
    return wide.reindex(index=row_labels(table), columns=list(dict.fromkeys(table["metric"])))


def paired_table(by_dataset: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The LLM runs of one protocol by columns `{metric} vs {R}` (headline metrics; R = base, sft,
    popularity, strategy), each cell `delta_cell`; empty when the protocol has no LLM row."""
    headline = headlines()[protocol]
    table = by_dataset[(by_dataset["protocol"] == protocol) & by_dataset["metric"].isin(headline)
                       & by_dataset["method"].map(run_prompt).notna()]
    if table.empty:
        return pd.DataFrame()
    # the strategy column only where a run is on more than one selection (DEALRec against random)
    references = ["base", "sft", "popularity"] + (["strategy"] if table["delta_vs_strategy"].notna().any() else [])
    long = pd.concat([table.assign(metric=table["metric"] + f" vs {r}", reference=r) for r in references])
    wide = wide_table(long, cell=lambda row: delta_cell(row, row["reference"]))
    return wide[[c for m in headline for r in references if (c := f"{m} vs {r}") in wide.columns]]


def catalogue_table(by_dataset: pd.DataFrame) -> pd.DataFrame:
    """The whole-catalogue rows (`CATALOGUE_PROTOCOLS`): `method / selection (protocol)` by HR@10,
    NDCG@10 and each one's paired difference to SASRec's full ranking; baselines first."""
    table = by_dataset[by_dataset["protocol"].isin(CATALOGUE_PROTOCOLS)
                       & by_dataset["metric"].isin(CATALOGUE_METRICS)]
    if table.empty:
        return pd.DataFrame()
    table = table.assign(selection=table["selection"] + " (" + table["protocol"] + ")")
    long = pd.concat([table.assign(cell=table.apply(format_cell, axis=1), column=table["metric"]),
                      table.assign(cell=table.apply(lambda r: delta_cell(r, "sasrec"), axis=1),
                                   column=table["metric"] + " vs sasrec")])
    long = long.assign(row=row_names(long))
    wide = long.pivot(index="row", columns="column", values="cell")
    return wide.reindex(index=row_labels(table), columns=[c for m in CATALOGUE_METRICS for c in (m, f"{m} vs sasrec")])


def markdown_table(wide: pd.DataFrame) -> list[str]:
    header = ["method / selection", *wide.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells in wide.iterrows():
        lines.append("| " + " | ".join([label, *(c if isinstance(c, str) else "" for c in cells)]) + " |")
    return lines + [""]


def markdown(summary: pd.DataFrame, resamples: int, level: float, seed: int) -> str:
    """Per dataset, one table per protocol (rows method / selection, columns metrics): one table with
    every protocol:metric column would be ~30 columns wide, too wide to read. A figure of several
    training seeds is shown by its pooled row."""
    pooled_seeds = bool((summary["n_seeds"] > 1).any())
    summary = figure_rows(summary)
    parts = ["# Summary", ""]
    for dataset, by_dataset in summary.groupby("dataset", sort=False):
        parts += [f"## {dataset}", ""]
        for protocol, table in by_dataset.groupby("protocol", sort=False):
            parts += [f"### {protocol} (n = {int(table['n'].max())} test samples)", ""]
            parts += markdown_table(wide_table(table))
        catalogue = catalogue_table(by_dataset)
        if len(catalogue):
            n = int(by_dataset.loc[by_dataset["protocol"].isin(CATALOGUE_PROTOCOLS), "n"].max())
            parts += [f"### Whole catalogue (up to n = {n} test samples; the decoding protocols on their subset)", ""]
            parts += markdown_table(catalogue)
        for protocol in headlines():
            wide = paired_table(by_dataset, protocol)
            if len(wide):
                parts += [f"### Paired differences: {protocol}", ""]
                parts += markdown_table(wide)
    parts += [
        "Legend: each cell is the statistic on the test split and its "
        f"{level:.0%} percentile bootstrap interval ({resamples} resamples of the test samples, seed {seed}). "
        "Paired differences (row minus reference, on the samples both have, the same resamples on both "
        "sides) are taken against up to four references: `sft` = the sft run a preference run started from "
        "(same prompt P and budget), else `sft-P` (same protocol; the row's selection when sft has it, "
        "else the default sft run), `base` = the "
        "untuned `base-P`, and `popularity` = the popularity baseline ranking the same items (its "
        "candidate ranking for likelihood and likelihood_norm, its full ranking for grounded and "
        "full_ranking), and `strategy` = the same run on the first selection strategy (a run on DEALRec's "
        "selection against the one on the random selection, same budget); the whole-catalogue rows "
        "(full_ranking, catalogue, grounded) are also read against `sasrec`, SASRec's full ranking. A row "
        "`(trained on A)` is a run trained on dataset A evaluated on this dataset's "
        "samples (config `transfer`): read against this dataset's `base` and `popularity` and against the "
        "sft run trained on A evaluated here. ▲ / ▼: the interval of the difference to `sft` lies above / "
        "below zero; †: the interval of the difference to `popularity` lies above zero (the row beats "
        "popularity). The "
        "Paired differences tables give each difference with its interval for a few headline metrics. "
        "random: the exact expectation of a uniformly random ranking; popularity: items scored by their "
        "count as a train-split target (ties ranked pessimistically, as in every row). "
        "likelihood: candidates ranked by sum log-prob of the title; likelihood_norm: by log-prob per token; "
        "auc: per user, then averaged over users. generation: greedy answer to the candidate prompt; "
        "valid = ValidRatio (exactly one candidate title in the answer), hit = HR@1 over all samples, "
        "hr@1_valid = HR@1 over valid answers only (hits / valid); several, history, outside, nothing = the "
        "shares of answers naming several candidates, a history item, another item, no item (with valid they "
        "sum to 1). generation_constrained: greedy decoding restricted to the candidate titles. "
        "likelihood_reversed: likelihood with the candidates listed in reversed order; top_changed = share of "
        "samples whose top candidate differs from the forward order's. grounded: the greedy answer to the open "
        "prompt embedded by the base model, all items ranked by L2 distance. catalogue: beam search constrained "
        "to every catalogue item's answer (its title, or its code ID under the sid and cid prompts), the top 20 "
        "items by summed log-prob; invalid and duplicate count returned outputs that are not items or repeat "
        "one (0 by construction). full_ranking: the surrogate "
        "and the popularity and random baselines ranking all items (history items other than the target "
        "excluded).",
        "",
    ]
    if pooled_seeds:
        parts += [
            "Training seeds (config `seeds`): a row of several seeds gives the mean over its seeds ± their "
            "sample standard deviation (n seeds), and the bootstrap interval of that mean (each resample of "
            "the test samples applied to every seed, the seeds' statistics averaged); its paired differences "
            "pair each seed's run with the reference of the same seed (sft-P-s43 for a run at seed 43; the one "
            "base-P and popularity row for every seed; base-P with sft at every seed), then average over seeds. "
            "summary.parquet holds each seed's own row too (column `seed`).",
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
