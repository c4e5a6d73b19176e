"""Ingestion: a dataset's raw files -> canonical interactions.parquet and items.parquet (DESIGN.md 3-4).

    python -m workflow.ingest --spec '{"name": "ml-100k", "format": "recbole-atomic", "path": "embedded"}' \
        --interactions results/ml-100k/data/interactions.parquet --items results/ml-100k/data/items.parquet

interactions: user_id, item_id (strings), timestamp (int64 seconds), rating (float64, nullable);
duplicate (user_id, item_id, timestamp) rows dropped (the first read is kept); sorted by user_id,
timestamp, item_id. items: item_id, title (clean, non-empty), categories (list<string>); items
without an id or a usable title are dropped, a repeated id keeps its first row; sorted by item_id.
Interactions are kept as read: `workflow.prepare` drops those whose item is not in items.parquet.
Both tables are read completely before anything is written, so a failed run leaves no artifact.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workflow import cli, formats
from workflow.formats import INTERACTIONS, ITEMS, BadLines, IngestError
from workflow.io import write_parquet

log = logging.getLogger("workflow.ingest")


def concat(chunks: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = list(chunks)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def order_codes(column: pa.ChunkedArray) -> np.ndarray:
    """Integers that sort like the column's values: strings are replaced by the rank of their
    distinct value (sorting integers is several times faster than sorting strings)."""
    if not pa.types.is_string(column.type):
        return column.to_numpy()
    encoded = pc.dictionary_encode(column).combine_chunks()
    rank = np.empty(len(encoded.dictionary), dtype=np.int64)
    rank[pc.array_sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(encoded.dictionary))
    return rank[encoded.indices.to_numpy()]


def sort_unique(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Sorted by `keys`, one row per distinct key combination: the first in table order (Arrow's
    sort is stable)."""
    codes = {k: order_codes(table[k]) for k in keys}
    order = pc.sort_indices(pa.table(codes), sort_keys=[(k, "ascending") for k in keys]).to_numpy()
    changed = [codes[k][order] for k in keys]
    first = np.ones(len(order), dtype=bool)  # the row starts a new key combination
    first[1:] = np.logical_or.reduce([c[1:] != c[:-1] for c in changed])
    return table.take(order[first])


def finish_interactions(table: pa.Table) -> pa.Table:
    n = table.num_rows
    table = sort_unique(table, ["user_id", "timestamp", "item_id"])
    if n - table.num_rows:
        log.info("dropped %d duplicate (user_id, item_id, timestamp) interactions", n - table.num_rows)
    return table


def finish_items(table: pa.Table) -> pa.Table:
    no_id = table["item_id"].null_count
    table = table.filter(pc.is_valid(table["item_id"]))
    n = table.num_rows
    table = table.filter(pc.is_valid(table["title"]))  # readers turn a blank title into null
    if no_id:
        log.warning("skipped %d item records without an id", no_id)
    if n - table.num_rows:
        log.info("dropped %d items without a usable title", n - table.num_rows)
    n = table.num_rows
    table = sort_unique(table, ["item_id"])
    if n - table.num_rows:
        log.info("dropped %d repeated item records (kept the first of each id)", n - table.num_rows)
    return table


def ingest(spec: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
    """Read one dataset (spec: its validated `datasets` entry with its name: format, path, category,
    stem, max_bad_lines) into the canonical (interactions, items) tables."""
    dataset = spec.get("name", "<unnamed>")
    inter_path, item_path = formats.resolve_files(spec)
    budget = BadLines(int(spec["max_bad_lines"]))
    read = formats.FORMATS[spec["format"]][2]
    log.info("dataset '%s' (%s): reading %s and %s", dataset, spec["format"], inter_path, item_path)
    inter_chunks, item_chunks = read(inter_path, item_path, budget)
    interactions = concat(inter_chunks, INTERACTIONS)
    items = concat(item_chunks, ITEMS)
    if interactions.num_rows == 0:
        raise IngestError(f"dataset '{dataset}': no interactions in {inter_path}")
    interactions = finish_interactions(interactions.cast(INTERACTIONS))
    items = finish_items(items.cast(ITEMS))
    if items.num_rows == 0:
        raise IngestError(f"dataset '{dataset}': no item with a usable title in {item_path}")
    for path, n in budget.per_file.items():
        log.warning("skipped %d malformed lines in %s (max_bad_lines=%d)", n, path, budget.limit)
    log.info(
        "dataset '%s': %d interactions, %d users, %d items with titles",
        dataset, interactions.num_rows, pc.count_distinct(interactions["user_id"]).as_py(), items.num_rows,
    )
    return interactions, items


def run(spec: dict[str, Any], interactions_path, items_path) -> tuple[pa.Table, pa.Table]:
    interactions, items = ingest(spec)
    write_parquet(interactions, interactions_path, config=spec, schema=INTERACTIONS)
    write_parquet(items, items_path, config=spec, schema=ITEMS)
    return interactions, items


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n")[0])
    p.add_argument("--spec", type=cli.json_arg, required=True, help="dataset config slice as JSON")
    p.add_argument("--interactions", required=True, help="output interactions.parquet")
    p.add_argument("--items", required=True, help="output items.parquet")
    return cli.run(lambda a: run(a.spec, a.interactions, a.items), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
