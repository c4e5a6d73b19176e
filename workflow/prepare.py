"""Preparation: canonical interactions + items -> next-item samples with stored splits and candidates.

Steps, in order (DESIGN.md section 4):
  1. rating threshold: keep rating >= threshold; null ratings are kept only when the threshold is null.
     Exact duplicate events (same user, item and timestamp, e.g. one row per tag in Last.fm) are
     then collapsed to one, since they would inflate k-core counts and repeat an item as its own target.
  2. drop interactions whose item has no usable title (absent from items, or an empty/blank title).
  3. k-core to a fixed point: users and items with fewer than `kcore` interactions are removed,
     repeated until nothing changes.
  4. chronological order per user: by timestamp, ties broken by item_id (string order), so the
     order never depends on the order of the input rows.
  5. samples: for a user's sequence i_0..i_{L-1}, position t >= min_history gives one sample with
     history = the up-to-max_history items before t (oldest first) and target = i_t.
     Split `loo`: position L-1 is test, L-2 valid, earlier positions train; valid/test histories hold
     every earlier item (a test history contains the valid target). Users with fewer than 3
     interactions (only possible with kcore < 3) get train samples only.
     Split `ratio`: all samples sorted by (target timestamp, user_id, position) and cut at the
     cumulative ratios, so every valid/test target is at or after the user's training targets.
  6. candidates: the target plus n_candidates - 1 items the user never interacted with (anywhere in the
     filtered data), drawn uniformly without replacement, shuffled; one seeded vectorised pass over
     the samples in (user_id, position) order. The item universe is the items left after k-core.
  7. max_samples: a seeded random subset per split, drawn after the candidates are fixed.

sample_id is f"{user_id}:{position:06d}" (position 0-based in the user's ordered sequence).
"""
from __future__ import annotations

import logging
import zlib
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workflow import cli, config, io

log = logging.getLogger("workflow.prepare")

SPLITS = ("train", "valid", "test")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating")
ITEM_COLUMNS = ("item_id", "title")
SAMPLES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("user_id", pa.string()),
        ("history", pa.list_(pa.string())),
        ("target", pa.string()),
        ("candidates", pa.list_(pa.string())),
        ("target_timestamp", pa.int64()),
    ]
)
# The columns the later stages read (target_timestamp records the split's cut only)
SAMPLE_COLUMNS = tuple(name for name in SAMPLES_SCHEMA.names if name != "target_timestamp")


# ---------------------------------------------------------------------------------------- settings


def resolve_settings(settings: dict) -> dict:
    """Validate the `prepare` block against config/schema.yaml and fill its defaults."""
    settings = config.validate_block("prepare", settings)
    if any(r < 0 for r in settings["ratio"]) or sum(settings["ratio"]) <= 0:
        raise ValueError(f"prepare.ratio: need non-negative parts with a positive sum, got {settings['ratio']}")
    return settings


def _rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent stream per purpose, so e.g. changing a cap never moves a candidate."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _check_columns(df: pd.DataFrame, columns: tuple[str, ...], not_null: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")
    for c in not_null:
        if df[c].isna().any():
            raise ValueError(f"{what}: column '{c}' has {int(df[c].isna().sum())} null value(s)")


# -------------------------------------------------------------------------------- filtering steps


def apply_rating_threshold(interactions: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
    if threshold is None:
        return interactions
    keep = interactions["rating"].ge(threshold).fillna(False).to_numpy(dtype=bool)
    return interactions[keep]


def drop_duplicate_events(interactions: pd.DataFrame) -> pd.DataFrame:
    return interactions.drop_duplicates(subset=["user_id", "item_id", "timestamp"], keep="first")


def titled_items(items: pd.DataFrame) -> pd.Index:
    """Item ids with a usable (non-blank) title."""
    title = items["title"].astype("str")
    usable = title.notna() & title.str.strip().str.len().gt(0)
    return pd.Index(items.loc[usable.to_numpy(dtype=bool), "item_id"].astype("str").unique())


def kcore_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of interactions in the k-core: every kept user and item has >= k kept
    interactions. `users`, `items` are integer codes (0..n-1); iterates to a fixed point."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    n_users = int(users.max()) + 1 if len(users) else 0
    n_items = int(items.max()) + 1 if len(items) else 0
    idx = np.arange(len(users))
    while len(idx):
        u, i = users[idx], items[idx]
        ok = (np.bincount(u, minlength=n_users)[u] >= k) & (np.bincount(i, minlength=n_items)[i] >= k)
        if ok.all():
            break
        idx = idx[ok]
    keep[:] = False
    keep[idx] = True
    return keep


def chronological_order(users: np.ndarray, timestamps: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Row order by (user, timestamp, item); codes must follow the ids' string order, so the
    item tie-break is item_id order and the result is independent of the input row order."""
    return np.lexsort((items, timestamps, users))


# ------------------------------------------------------------------------------------- samples


def sample_positions(users: np.ndarray, min_history: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows sorted by user: (row index of each sample, its position in the user's sequence,
    the user's sequence length)."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, len(users)])
    position = np.arange(len(users)) - np.repeat(starts, lengths)
    length = np.repeat(lengths, lengths)
    rows = np.flatnonzero(position >= min_history)
    return rows, position[rows], length[rows]


def loo_split(position: np.ndarray, length: np.ndarray) -> np.ndarray:
    """0 train, 1 valid, 2 test: last item test, second-last valid (users with >= 3 interactions)."""
    split = np.zeros(len(position), dtype=np.int8)
    full = length >= 3
    split[full & (position == length - 2)] = 1
    split[full & (position == length - 1)] = 2
    return split


def ratio_split(timestamps: np.ndarray, users: np.ndarray, position: np.ndarray, ratio) -> np.ndarray:
    """Global chronological cut: earliest share train, next valid, latest test."""
    order = np.lexsort((position, users, timestamps))
    cum = np.cumsum(ratio) / np.sum(ratio)
    cuts = np.round(cum[:2] * len(order)).astype(np.int64)
    split = np.empty(len(order), dtype=np.int8)
    split[order[: cuts[0]]] = 0
    split[order[cuts[0] : cuts[1]]] = 1
    split[order[cuts[1] :]] = 2
    return split


def history_ranges(rows: np.ndarray, position: np.ndarray, max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """List offsets and flat row indices of each sample's history (oldest first)."""
    lengths = np.minimum(position, max_history)
    offsets = np.r_[0, np.cumsum(lengths)]
    flat = np.repeat(rows - lengths - offsets[:-1], lengths) + np.arange(offsets[-1])
    return offsets, flat


# ----------------------------------------------------------------------------------- candidates


def draw_negatives(
    sample_users: np.ndarray,
    user_items: tuple[np.ndarray, np.ndarray],
    n_items: int,
    k: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """k distinct items per sample, uniform over the items its user never interacted with.

    `user_items` = (offsets, sorted unique item codes per user, concatenated). Written by hand
    because numpy's `choice(replace=False)` has no batched form: Robert Floyd's algorithm draws k
    distinct indices from [0, F_u) for every sample at once (k vectorised steps, no rejection
    loop), then the index r maps to the r-th item outside the user's set via a searchsorted.
    The order within a row is not uniform; the caller shuffles each row."""
    offsets, flat_items = user_items
    n_user_items = np.diff(offsets)
    n_free = (n_items - n_user_items)[sample_users].astype(np.int64)
    chosen = np.empty((len(sample_users), k), dtype=np.int64)
    for step in range(k):
        j = n_free - k + step
        t = np.floor(rng.random(len(sample_users)) * (j + 1)).astype(np.int64)
        t = np.minimum(t, j)  # guards the float edge case u * (j + 1) == j + 1
        taken = (chosen[:, :step] == t[:, None]).any(axis=1)
        chosen[:, step] = np.where(taken, j, t)
    # r-th free item of user u = r + #{i : s_i - i <= r} over the user's sorted items s_i.
    user_of_item = np.repeat(np.arange(len(n_user_items)), n_user_items)
    gap_key = user_of_item * np.int64(n_items) + (flat_items - (np.arange(len(flat_items)) - offsets[user_of_item]))
    base = sample_users.astype(np.int64) * n_items
    first = offsets[sample_users]
    negatives = np.empty((len(sample_users), k), dtype=np.int32)
    for step in range(k):
        r = chosen[:, step]
        negatives[:, step] = r + np.searchsorted(gap_key, base + r, side="right") - first
    return negatives


def check_enough_negatives(
    user_labels, n_user_items: np.ndarray, users_with_samples: np.ndarray, n_items: int, k: int
) -> None:
    short = users_with_samples[n_items - n_user_items[users_with_samples] < k]
    if len(short):
        u = short[0]
        raise ValueError(
            f"user '{user_labels[u]}' interacted with {int(n_user_items[u])} of {n_items} items, leaving "
            f"{n_items - int(n_user_items[u])} negatives; n_candidates={k + 1} needs {k} "
            f"({len(short)} user(s) affected); lower prepare.n_candidates"
        )


def draw_candidates(
    sample_users: np.ndarray,
    targets: np.ndarray,
    user_items: tuple[np.ndarray, np.ndarray],
    n_items: int,
    n_candidates: int,
    seed: int,
) -> np.ndarray:
    """(n_samples, n_candidates) item codes: the target and n_candidates - 1 negatives, shuffled."""
    rng = _rng(seed, "candidates")
    negatives = draw_negatives(sample_users, user_items, n_items, n_candidates - 1, rng)
    candidates = np.column_stack([targets.astype(np.int32), negatives])
    return rng.permuted(candidates, axis=1)


def cap_samples(split: np.ndarray, max_samples: dict, seed: int) -> np.ndarray:
    """Sorted indices kept after the per-split caps (each split drawn with its own stream)."""
    keep = []
    for code, name in enumerate(SPLITS):
        idx = np.flatnonzero(split == code)
        cap = max_samples.get(name)
        if cap is not None and len(idx) > cap:
            idx = np.sort(_rng(seed, f"cap-{name}").choice(idx, size=cap, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep))


# ------------------------------------------------------------------------------------- pipeline


def _log_counts(step: str, users: np.ndarray, items: np.ndarray) -> None:
    log.info(
        "%-22s %9d interactions, %8d users, %8d items",
        step, len(users), len(np.unique(users)) if len(users) else 0, len(np.unique(items)) if len(items) else 0,
    )


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes in sorted string order, and the labels."""
    codes, labels = pd.factorize(values.astype("str"), sort=True)
    return codes.astype(np.int64), np.asarray(labels, dtype=object)


def filter_interactions(interactions: pd.DataFrame, items: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """Steps 1-3; returns user_id, item_id, timestamp of the k-core, in input order."""
    _check_columns(interactions, INTERACTION_COLUMNS, ("user_id", "item_id", "timestamp"), "interactions")
    _check_columns(items, ITEM_COLUMNS, ("item_id",), "items")
    df = interactions[["user_id", "item_id", "timestamp", "rating"]]
    log.info("%-22s %9d interactions", "input", len(df))
    df = apply_rating_threshold(df, settings["rating_threshold"])
    log.info("%-22s %9d interactions", f"rating >= {settings['rating_threshold']}", len(df))
    if df.empty:
        raise ValueError(f"no interactions left after prepare.rating_threshold={settings['rating_threshold']}")
    df = drop_duplicate_events(df)
    log.info("%-22s %9d interactions", "duplicates dropped", len(df))
    titled = titled_items(items)
    df = df[df["item_id"].astype("str").isin(titled).to_numpy(dtype=bool)]
    log.info("%-22s %9d interactions (%d titled items)", "items with title", len(df), len(titled))
    if df.empty:
        raise ValueError("no interactions left after dropping items without a usable title in items")
    users, _ = _codes(df["user_id"])
    item_codes, _ = _codes(df["item_id"])
    keep = kcore_filter(users, item_codes, settings["kcore"])
    _log_counts(f"{settings['kcore']}-core", users[keep], item_codes[keep])
    if not keep.any():
        raise ValueError(f"no interactions left after k-core filtering with prepare.kcore={settings['kcore']}")
    return df[keep][["user_id", "item_id", "timestamp"]]


def build_samples(interactions: pd.DataFrame, items: pd.DataFrame, settings: dict, seed: int) -> pd.DataFrame:
    """The samples table (see module docstring); rows sorted by sample_id. List columns are
    Arrow-backed (`pd.ArrowDtype`), so a row's history or candidates reads as a Python list."""
    settings = resolve_settings(settings)
    df = filter_interactions(interactions, items, settings)

    users, user_labels = _codes(df["user_id"])
    item_codes, item_labels = _codes(df["item_id"])
    timestamps = df["timestamp"].to_numpy(dtype=np.int64)
    order = chronological_order(users, timestamps, item_codes)
    users, item_codes, timestamps = users[order], item_codes[order], timestamps[order]
    n_items = len(item_labels)

    rows, position, length = sample_positions(users, settings["min_history"])
    if not len(rows):
        raise ValueError(
            f"no samples: no user has more than prepare.min_history={settings['min_history']} interactions"
        )
    sample_users, targets, target_ts = users[rows], item_codes[rows], timestamps[rows]
    if settings["split"] == "loo":
        split = loo_split(position, length)
    else:
        split = ratio_split(target_ts, sample_users, position, settings["ratio"])
    for code, name in enumerate(SPLITS):
        log.info("samples %-5s %9d", name, int((split == code).sum()))

    # Each user's distinct items, sorted: the set that negatives must avoid.
    pairs = np.unique(users * np.int64(n_items) + item_codes)
    pair_users = pairs // n_items
    user_offsets = np.r_[0, np.cumsum(np.bincount(pair_users, minlength=len(user_labels)))]
    user_items = (user_offsets, pairs - pair_users * n_items)
    k = settings["n_candidates"] - 1
    check_enough_negatives(user_labels, np.diff(user_offsets), np.unique(sample_users), n_items, k)
    candidates = draw_candidates(sample_users, targets, user_items, n_items, settings["n_candidates"], seed)

    keep = cap_samples(split, settings["max_samples"], seed)
    for code, name in enumerate(SPLITS):
        log.info("kept    %-5s %9d", name, int((split[keep] == code).sum()))
    return _samples_frame(
        rows[keep], position[keep], split[keep], candidates[keep], users, item_codes, timestamps,
        user_labels, item_labels, settings["max_history"],
    )


def _samples_frame(rows, position, split, candidates, users, item_codes, timestamps,
                   user_labels, item_labels, max_history) -> pd.DataFrame:
    """Assemble the kept samples as Arrow arrays (string ids taken from the label arrays)."""
    user_arr = pa.array(user_labels, pa.string())
    item_arr = pa.array(item_labels, pa.string())
    sample_user = user_arr.take(pa.array(users[rows]))
    pos_text = pc.utf8_lpad(pc.cast(pa.array(position), pa.string()), width=6, padding="0")
    offsets, flat = history_ranges(rows, position, max_history)
    n_cand = candidates.shape[1]
    cand_offsets = pa.array(np.arange(0, candidates.size + 1, n_cand), pa.int32())
    table = pa.table(
        {
            "sample_id": pc.binary_join_element_wise(sample_user, pos_text, ":"),
            "split": pa.array(np.asarray(SPLITS, dtype=object)[split], pa.string()),
            "user_id": sample_user,
            "history": pa.ListArray.from_arrays(
                pa.array(offsets, pa.int32()), item_arr.take(pa.array(item_codes[flat]))
            ),
            "target": item_arr.take(pa.array(item_codes[rows])),
            "candidates": pa.ListArray.from_arrays(cand_offsets, item_arr.take(pa.array(candidates.ravel()))),
            "target_timestamp": pa.array(timestamps[rows], pa.int64()),
        },
        schema=SAMPLES_SCHEMA,
    ).sort_by("sample_id")
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


# ------------------------------------------------------------------------------------------ CLI


def _read(path: str, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: {what} missing column(s) {missing}; has {names}")
    return pd.read_parquet(path, columns=list(columns))


def run(args) -> None:
    interactions = _read(args.interactions, INTERACTION_COLUMNS, "interactions")
    items = _read(args.items, ITEM_COLUMNS, "items")
    settings = resolve_settings(args.spec)
    samples = build_samples(interactions, items, settings, args.seed)
    io.write_parquet(samples, args.samples, config=settings, seed=args.seed, schema=SAMPLES_SCHEMA)
    log.info("wrote %d samples to %s", len(samples), args.samples)


def check_samples(samples: pd.DataFrame, source: str = "samples",
                  columns: Sequence[str] = SAMPLE_COLUMNS) -> None:
    """What every stage reading a samples table checks, each error naming `source` (its file): the
    `columns` it reads are there, every split is one of SPLITS and every history holds an item
    (each model conditions on the history)."""
    missing = [c for c in columns if c not in samples.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}")
    unknown = ~samples["split"].isin(SPLITS)
    if unknown.any():
        row = samples[unknown].iloc[0]
        raise ValueError(f"{source}: sample '{row['sample_id']}' has unknown split '{row['split']}'")
    empty = samples["history"].map(len) == 0
    if empty.any():
        raise ValueError(f"{source}: sample '{samples.loc[empty, 'sample_id'].iloc[0]}' has an empty history")


def read_samples(path, splits: Sequence[str] = SPLITS, columns: Sequence[str] = SAMPLE_COLUMNS) -> pd.DataFrame:
    """The samples of `splits` in the samples table at `path` (every column, the file's row order),
    checked by `check_samples`; none in `splits` is an error too."""
    samples = pd.read_parquet(path)
    check_samples(samples, path, columns)
    chosen = samples[samples["split"].isin(list(splits))].reset_index(drop=True)
    if chosen.empty:
        raise ValueError(f"{path}: no samples in splits {list(splits)}")
    return chosen


def item_vocabulary(samples: pd.DataFrame, items: pd.DataFrame | None = None, source: str = "items") -> list[str]:
    """The dataset's item universe: every item in any history, target or candidate list, sorted;
    all must be in `items`. The surrogate's full ranking and the LLMs' grounded ranking both rank
    exactly these items (items.parquet also holds items the k-core filter removed)."""
    used = set(samples["target"].astype(str))
    for column in ("history", "candidates"):
        used.update(str(item) for row in samples[column] for item in row)
    if items is not None:
        unknown = used - set(items["item_id"].astype(str))
        if unknown:
            raise ValueError(f"{source}: {len(unknown)} item ids used in the samples are missing, "
                             f"e.g. {sorted(unknown)[:5]}")
    return sorted(used)


def main(argv=None) -> int:
    p = cli.parser("Build next-item samples (splits, histories, candidates) from canonical Parquet.")
    p.add_argument("--spec", type=cli.json_arg, required=True, help="the `prepare` config block as JSON")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--interactions", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--samples", required=True, help="output samples.parquet")
    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
