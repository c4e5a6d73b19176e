"""Benchmark of the preparation stage on synthetic data: k-core + sample building.

Default: 2,000,000 interactions, 100k users, 20k items with power-law (Zipf-like) item popularity
and per-user activity, timestamps spread over ~5 years; kcore 5, n_candidates 20, max_history 10,
no caps. Prints seconds per phase of `build_samples` (timers wrapped around the stage's own helpers),
the Parquet write, and the machine load (the CPUs may be shared). Target: k-core + samples <= 60 s.

    .venv/bin/python bench/bench_prepare.py [--interactions N] [--users U] [--items I]
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
import pandas as pd

from workflow import io, prepare


def synthetic(n: int, n_users: int, n_items: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    item_weight = 1.0 / np.arange(1, n_items + 1) ** 0.8
    user_weight = 1.0 / np.arange(1, n_users + 1) ** 0.5
    items = rng.choice(n_items, size=n, p=item_weight / item_weight.sum())
    users = rng.choice(n_users, size=n, p=user_weight / user_weight.sum())
    start = 1_300_000_000 + rng.integers(0, 5 * 365 * 86400, size=n_users)
    timestamps = start[users] + rng.exponential(30 * 86400, size=n).astype(np.int64)
    interactions = pd.DataFrame(
        {
            "user_id": pd.Series([f"u{u}" for u in users], dtype="str"),
            "item_id": pd.Series([f"i{i}" for i in items], dtype="str"),
            "timestamp": timestamps.astype(np.int64),
            "rating": rng.integers(1, 6, size=n).astype(np.float64),
        }
    )
    catalogue = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(n_items)], "title": [f"Item {i}" for i in range(n_items)]}
    )
    return interactions, catalogue


PHASES = ("filter_interactions", "chronological_order", "sample_positions", "loo_split",
          "draw_candidates", "cap_samples", "_samples_frame")


def time_phases() -> dict[str, float]:
    """Wrap the stage's helpers (build_samples calls them through the module) with timers."""
    seconds: dict[str, float] = defaultdict(float)
    for name in PHASES:
        def timed(*a, _f=getattr(prepare, name), _name=name, **kw):
            t0 = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                seconds[_name] += time.perf_counter() - t0
        setattr(prepare, name, functools.wraps(getattr(prepare, name))(timed))
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interactions", type=int, default=2_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--verbose", action="store_true", help="log the stage's own counts")
    args = p.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = prepare.resolve_settings({"kcore": 5, "max_history": 10, "n_candidates": 20})

    print(f"load average before: {os.getloadavg()} on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    interactions, items = synthetic(args.interactions, args.users, args.items)
    t_gen = time.perf_counter() - t0
    print(f"generate {len(interactions):,} interactions: {t_gen:.1f} s (not counted)")

    seconds = time_phases()
    t0 = time.perf_counter()
    samples = prepare.build_samples(interactions, items, settings, seed=42)
    total = time.perf_counter() - t0
    labels = {
        "filter_interactions": "threshold, dedupe, titles, 5-core",
        "chronological_order": "chronological order",
        "sample_positions": "sample positions",
        "loo_split": "loo split",
        "draw_candidates": "candidates (19 negatives each)",
        "cap_samples": "caps",
        "_samples_frame": "assemble Arrow table, sort",
    }
    for name in PHASES:
        print(f"  {labels[name]:<36} {seconds[name]:6.1f} s")
    print(f"  {'other (id codes, user item sets)':<36} {total - sum(seconds.values()):6.1f} s")
    print(f"total build_samples: {total:.1f} s -> {len(samples):,} samples {samples['split'].value_counts().to_dict()}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        io.write_parquet(samples, f"{tmp}/samples.parquet", config=settings, seed=42, schema=prepare.SAMPLES_SCHEMA)
        t_write = time.perf_counter() - t0
        size = os.path.getsize(f"{tmp}/samples.parquet") / 2**20
    print(f"write samples.parquet ({size:.0f} MiB): {t_write:.1f} s (not counted)")
    print(f"load average after: {os.getloadavg()}")
    print(f"target 60 s: {'met' if total <= 60 else 'NOT met'} ({total:.1f} s)")


if __name__ == "__main__":
    main()
