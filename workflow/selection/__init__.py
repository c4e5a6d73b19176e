"""Few-shot training-data selection: which train samples the LLM methods are fine-tuned on.

Strategies (config `selection.strategies`; one module per concern):
- `random` (the baseline DEALRec is compared to) and `all`: `random_subset`;
- `dealrec`, and its ablations `influence` and `effort`: `dealrec`, from the influence scores on the
  SASRec surrogate (`influence`, LiSSA), the effort scores on the LLM (`effort`, per-sample LoRA
  gradient norms) and coverage-enhanced sampling (`coverage`).

Output (`python -m workflow.selection`, rules/selection.smk): the chosen samples sorted by
sample_id, with their scores (influence, effort, combined) and bin, all null for random/all; its
provenance metadata records the strategy. A DEALRec strategy also writes every candidate's scores
beside it (`<strategy>.scores.parquet`).

A run's `-n<budget>` trains on `subset(selection, budget, seed)`: for random/all the nested seeded
subset (`nested_subset`: learning curves add data), for a DEALRec strategy a fresh DEALRec
selection of that size from the stored scores.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow import cli
from workflow.io import read_provenance, write_parquet
from workflow.runs import SELECTIONS
from workflow.selection import dealrec
from workflow.selection.random_subset import nested_subset, select_random, train_ids

__all__ = ["SCHEMA", "STRATEGIES", "main", "nested_subset", "run_selection", "select", "subset"]

log = logging.getLogger(__name__)

STRATEGIES = SELECTIONS  # declared in workflow/runs.py, below config.py, which fills the schema's enum from it
SCHEMA = pa.schema([("sample_id", pa.string()), ("influence", pa.float64()), ("effort", pa.float64()),
                    ("combined", pa.float64()), ("bin", pa.int32())])


def with_empty_scores(ids) -> pd.DataFrame:
    """A selection without scores (random, all): the score and bin columns are null."""
    ids = np.asarray(ids, dtype=object).astype(str)
    return pd.DataFrame({"sample_id": ids, "influence": np.nan, "effort": np.nan, "combined": np.nan,
                         "bin": pd.array([pd.NA] * len(ids), dtype="Int32")})


def select(samples: pd.DataFrame, strategy: str, budget: int, seed: int) -> pd.DataFrame:
    """The random or all selection (DEALRec strategies need scores: `run_selection`)."""
    ids = train_ids(samples)
    if strategy == "all":
        return with_empty_scores(ids)
    if strategy == "random":
        return with_empty_scores(select_random(ids, budget, seed))
    if strategy in dealrec.STRATEGIES:
        raise ValueError(f"strategy {strategy!r} selects from influence/effort scores (run_selection)")
    raise ValueError(f"unknown selection strategy {strategy!r} (known: {', '.join(STRATEGIES)})")


def subset(selection_path: str | Path, budget: int, seed: int) -> list[str]:
    """The sample ids a run's -n<budget> trains on, sorted (see the module docstring)."""
    meta = read_provenance(selection_path).get("config") or {}
    if meta.get("strategy") in dealrec.STRATEGIES:
        return sorted(dealrec.rerun_at_budget(selection_path, meta["sampling"], budget, seed))
    ids = pd.read_parquet(selection_path, columns=["sample_id"])["sample_id"].astype(str)
    return nested_subset(ids, budget, seed)


def read_scores(path: str | Path | None, column: str) -> pd.DataFrame | None:
    if path is None:
        return None
    table = pd.read_parquet(path)
    if not {"sample_id", column} <= set(table.columns):
        raise ValueError(f"{path}: expected columns sample_id and {column}")
    return table[["sample_id", column]]


def run_selection(samples_path, strategy: str, budget: int, seed: int, out, *, settings: dict[str, Any] | None = None,
                  influence_path=None, effort_path=None) -> pd.DataFrame:
    """Write the selection `out` (and, for a DEALRec strategy, its score table beside it)."""
    from workflow.config import validate_block

    samples = pd.read_parquet(samples_path, columns=["sample_id", "split"])
    config: dict[str, Any] = {"strategy": strategy, "budget": budget}
    if strategy in dealrec.STRATEGIES:
        block = validate_block("selection", settings or {})["dealrec"]
        chosen, full, sampling = dealrec.select_dealrec(
            strategy, train_ids(samples), read_scores(influence_path, "influence"), read_scores(effort_path, "effort"),
            block, budget, seed)
        config["sampling"] = sampling
        write_parquet(full, dealrec.scores_path(out), schema=dealrec.SCORES_SCHEMA, seed=seed, config=config)
    else:
        chosen = select(samples, strategy, budget, seed)
    n_train = int((samples["split"] == "train").sum())
    log.info("%s: %d of %d train samples", strategy, len(chosen), n_train)
    write_parquet(chosen, out, schema=SCHEMA, seed=seed, config=config)
    return chosen


def main(argv=None) -> int:
    p = cli.parser("Select the train samples the LLM methods are fine-tuned on.")
    p.add_argument("--samples", required=True)
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--spec", type=cli.json_arg, default=None, help="JSON: the config's `selection` block (DEALRec)")
    p.add_argument("--influence", default=None, help="influence scores (workflow.selection.influence)")
    p.add_argument("--effort", default=None, help="effort scores (workflow.selection.effort)")
    return cli.run(lambda a: run_selection(a.samples, a.strategy, a.budget, a.seed, a.out, settings=a.spec,
                                           influence_path=a.influence, effort_path=a.effort), p, argv)
