"""A run's `-n<budget>` as its own step: the `budget` samples of a selection the run trains on
(`workflow.selection.subset`: the nested seeded subset of random / all, DEALRec re-run at that
size for a DEALRec selection), written as a selection file the training stages read as it is.

    python -m workflow.selection.budget --selection .../selection/random.parquet --budget 256 \
        --seed 42 --out .../selection/random-n256.parquet
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from workflow import cli
from workflow.io import read_provenance, write_parquet

log = logging.getLogger(__name__)


def run_budget(selection_path: str | Path, budget: int, seed: int, out: str | Path) -> pd.DataFrame:
    from workflow.selection import SCHEMA, dealrec, subset

    selection = pd.read_parquet(selection_path).assign(sample_id=lambda d: d["sample_id"].astype(str))
    if budget > len(selection):
        raise ValueError(f"{selection_path}: a budget of {budget} samples asked for, the selection holds "
                         f"{len(selection)} (raise selection.budget or lower the run's -n)")
    chosen = subset(selection_path, budget, seed)
    # a DEALRec re-run may pick samples outside the larger selection: their scores come from the pool
    pool = selection
    if dealrec.scores_path(selection_path).is_file():
        scored = (pd.read_parquet(dealrec.scores_path(selection_path))
                  .assign(sample_id=lambda d: d["sample_id"].astype(str)))
        pool = pd.concat([selection, scored[~scored["sample_id"].isin(selection["sample_id"])]], ignore_index=True)
    columns = [c for c in SCHEMA.names if c in pool.columns]
    table = pd.DataFrame({"sample_id": chosen}).merge(pool[columns], on="sample_id", how="left")
    meta = read_provenance(selection_path).get("config") or {}
    write_parquet(table, out, schema=SCHEMA if columns == SCHEMA.names else None, seed=seed,
                  config={"strategy": meta.get("strategy"), "of": str(selection_path), "budget": budget})
    log.info("%s: %d of %d samples (seed %d) -> %s", selection_path, len(table), len(selection), seed, out)
    return table


def main(argv=None) -> int:
    p = cli.parser("The -n<budget> subset of a selection that a run trains on.")
    p.add_argument("--selection", required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    return cli.run(lambda a: run_budget(a.selection, a.budget, a.seed, a.out), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
