"""DEALRec selections from stored influence and effort scores (DESIGN.md section 5).

Strategies (each selects from the same candidate pool, `random_subset.candidate_pool`):
- `dealrec`: S = minmax(I) + lambda * minmax(E), then coverage-enhanced sampling (`coverage`);
- `influence`: the ablation with lambda = 0 (S = minmax(I); the effort scores are not needed);
- `effort`: the ablation without influence (S = minmax(E)).

The stage writes two tables: the selection (the chosen samples with their scores and bin; what the
LLM stages read) and, beside it as `<strategy>.scores.parquet`, every candidate's scores, whether the
hard prune dropped it, its bin and whether it was chosen. A run's `-n<budget>` on a DEALRec
selection re-runs the sampling at that budget from the stored scores (`rerun_at_budget`): a true
DEALRec selection of n, not a subset of the larger one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow.runs import DEALREC_STRATEGIES
from workflow.selection.coverage import combined_score, coverage_sample
from workflow.selection.random_subset import candidate_pool

log = logging.getLogger(__name__)

STRATEGIES = DEALREC_STRATEGIES  # declared in workflow/runs.py, below config.py, which fills the schema's enum from it
SCORE_TABLES = ("influence", "effort")  # the stored scores (workflow/selection/influence.py, effort.py)
# The scores each strategy reads (its rule's inputs, --influence / --effort): DEALRec both, an ablation its own.
SCORES = {"dealrec": SCORE_TABLES, "influence": ("influence",), "effort": ("effort",)}
SCORES_SUFFIX = ".scores.parquet"  # every candidate's scores, beside the selection: <strategy>.scores.parquet
SCORES_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("influence", pa.float64()), ("effort", pa.float64()), ("combined", pa.float64()),
    ("pruned", pa.bool_()), ("bin", pa.int32()), ("selected", pa.bool_()),
])


def uses_influence(strategy: str) -> bool:
    return "influence" in SCORES[strategy]


def uses_effort(strategy: str) -> bool:
    return "effort" in SCORES[strategy]


def scores_path(selection_path: str | Path) -> Path:
    """Where a DEALRec selection's per-candidate score table lives: beside it."""
    path = Path(selection_path)
    return path.with_name(path.name.removesuffix(".parquet") + SCORES_SUFFIX)


def effort_weight(dealrec: dict[str, Any], strategy: str) -> float:
    """lambda in S = minmax(I) + lambda minmax(E): the block's for both scores, 0 without the effort, 1
    without the influence (S = minmax(E))."""
    if not uses_effort(strategy):
        return 0.0
    return float(dealrec["lambda"]) if uses_influence(strategy) else 1.0


def sampling_settings(dealrec: dict[str, Any], strategy: str) -> dict[str, Any]:
    """What the sampling needs (stored in the selection's metadata for the -n re-runs)."""
    lam = effort_weight(dealrec, strategy)
    return {"lambda": lam, "hard_prune": float(dealrec["hard_prune"]), "n_bins": int(dealrec["n_bins"])}


def candidate_scores(strategy: str, pool: np.ndarray, influence: pd.DataFrame | None,
                     effort: pd.DataFrame | None, lam: float) -> pd.DataFrame:
    """sample_id (the pool, sorted), influence, effort (NaN where the strategy has none), combined."""
    table = pd.DataFrame({"sample_id": np.sort(np.asarray(pool, dtype=object)).astype(str)})
    for name, scores in (("influence", influence), ("effort", effort)):
        if scores is None:
            table[name] = np.nan
            continue
        lookup = scores.assign(sample_id=scores["sample_id"].astype(str)).set_index("sample_id")[name]
        missing = ~table["sample_id"].isin(lookup.index)
        if missing.any():
            raise ValueError(f"{name} scores miss {int(missing.sum())} candidates, e.g. "
                             f"'{table.loc[missing, 'sample_id'].iloc[0]}' (were they computed with the same "
                             "seed and selection.dealrec.effort.max_candidates?)")
        table[name] = lookup.loc[table["sample_id"]].to_numpy(dtype=np.float64)
    table["combined"] = combined_score(table["influence"].to_numpy() if uses_influence(strategy) else None,
                                       table["effort"].to_numpy() if uses_effort(strategy) else None, lam)
    return table


def sample(table: pd.DataFrame, budget: int, sampling: dict[str, Any], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(selection, the table with pruned / bin / selected) by coverage-enhanced sampling of `combined`."""
    result = coverage_sample(table["combined"].to_numpy(), budget, hard_prune_share=sampling["hard_prune"],
                             n_bins=sampling["n_bins"], seed=seed)
    full = table.copy()
    full["pruned"] = False
    full.loc[result.pruned, "pruned"] = True
    full["bin"] = pd.array(np.where(result.bin_of >= 0, result.bin_of, -1), dtype="Int32")
    full.loc[full["pruned"], "bin"] = pd.NA
    full["selected"] = False
    full.loc[result.chosen, "selected"] = True
    chosen = full.loc[full["selected"], ["sample_id", "influence", "effort", "combined", "bin"]]
    return chosen.reset_index(drop=True), full


def select_dealrec(strategy: str, train: np.ndarray, influence: pd.DataFrame | None, effort: pd.DataFrame | None,
                   dealrec: dict[str, Any], budget: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(selection, per-candidate table, sampling settings) of a DEALRec strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown DEALRec strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    if uses_influence(strategy) and influence is None:
        raise ValueError(f"strategy {strategy} needs the influence scores (--influence)")
    if uses_effort(strategy) and effort is None:
        raise ValueError(f"strategy {strategy} needs the effort scores (--effort)")
    pool = candidate_pool(train, dealrec["effort"]["max_candidates"], seed)
    sampling = sampling_settings(dealrec, strategy)
    table = candidate_scores(strategy, pool, influence if uses_influence(strategy) else None,
                             effort if uses_effort(strategy) else None, sampling["lambda"])
    chosen, full = sample(table, budget, sampling, seed)
    log.info("%s: %d of %d candidates (%d hard-pruned, %d non-empty bins); S quantiles %s", strategy, len(chosen),
             len(full), int(full["pruned"].sum()), full.loc[~full["pruned"], "bin"].nunique(),
             np.round(np.quantile(full["combined"], [0, 0.25, 0.5, 0.75, 1]), 4).tolist())
    return chosen, full, sampling


def rerun_at_budget(selection_path: str | Path, sampling: dict[str, Any], budget: int, seed: int) -> list[str]:
    """The DEALRec selection of `budget` samples from the stored scores of a selection's candidates."""
    path = scores_path(selection_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the score table of DEALRec selection {selection_path} is missing")
    table = pd.read_parquet(path, columns=["sample_id", "influence", "effort", "combined"])
    kept = len(table) - int(np.floor(sampling["hard_prune"] * len(table)))
    if budget > kept:
        raise ValueError(f"{selection_path}: a budget of {budget} samples asked for, {kept} candidates are left "
                         "after the hard prune (raise selection.dealrec.effort.max_candidates or lower the run's -n)")
    chosen, _ = sample(table, budget, sampling, seed)
    return chosen["sample_id"].tolist()
