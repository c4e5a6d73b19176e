"""Few-shot training-data selection: which train samples the LLM methods are fine-tuned on.

`random`: a seeded uniform subset of `budget` train samples (the baseline DEALRec is compared to);
`all`: every train sample. DEALRec's influence + effort selection writes the same format.
Output: one column, sample_id, sorted.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow import cli
from workflow.io import write_parquet

log = logging.getLogger(__name__)
SCHEMA = pa.schema([("sample_id", pa.string())])


def select(samples: pd.DataFrame, strategy: str, budget: int, seed: int) -> pd.DataFrame:
    train_ids = np.sort(samples.loc[samples["split"] == "train", "sample_id"].to_numpy(dtype=object))
    if len(train_ids) == 0:
        raise ValueError("no train samples to select from")
    if strategy == "all":
        chosen = train_ids
    elif strategy == "random":
        if budget >= len(train_ids):
            log.warning("budget %d >= %d train samples: selecting all", budget, len(train_ids))
            chosen = train_ids
        else:
            # Sorted ids + a seeded generator: the same subset whatever the row order of samples.
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(train_ids, size=budget, replace=False))
    else:
        raise ValueError(f"unknown selection strategy {strategy!r} (known: random, all)")
    return pd.DataFrame({"sample_id": chosen.astype(str)})


def nested_subset(sample_ids, budget: int, seed: int) -> list[str]:
    """`budget` of the ids, sorted: the first `budget` of one seeded permutation of the sorted ids,
    so a smaller budget's subset lies inside a larger one's (learning curves add data, they do not
    swap it). The whole list when budget >= its length."""
    ids = np.sort(np.asarray(list(sample_ids), dtype=object))
    if budget >= len(ids):
        return ids.astype(str).tolist()
    order = np.random.default_rng([seed, 0x5B5E7]).permutation(len(ids))
    return np.sort(ids[order[:budget]]).astype(str).tolist()


def main(argv=None) -> int:
    p = cli.parser("Select the train samples the LLM methods are fine-tuned on.")
    p.add_argument("--samples", required=True)
    p.add_argument("--strategy", required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)

    def run(args):
        samples = pd.read_parquet(args.samples, columns=["sample_id", "split"])
        chosen = select(samples, args.strategy, args.budget, args.seed)
        log.info("%s: %d of %d train samples", args.strategy, len(chosen), int((samples["split"] == "train").sum()))
        write_parquet(chosen, args.out, schema=SCHEMA, seed=args.seed,
                      config={"strategy": args.strategy, "budget": args.budget})

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
