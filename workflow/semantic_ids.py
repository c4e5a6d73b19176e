"""Item semantic IDs (TIGER, LC-Rec, MiniOneRec): each item gets a short code sequence from residual
quantisation of its embedding (title text, SASRec, or both), shown to and answered by the LLM as
added tokens.

Codes (`residual_codes`): RQ k-means, MiniOneRec's `rqkmeans` variant, with faiss's k-means: level
1 clusters the item embeddings into `codebook_size` centroids, each next level clusters the residuals
(embedding minus the centroids chosen so far); `levels` levels. An RQ-VAE (MiniOneRec's default)
would learn the encoder too; the k-means form needs no training loop and is their documented
alternative.

Embeddings: one set of codes per ID prompt (workflow/runs.py `ID_PROMPTS`), each quantising the
sources config `semantic_ids.embeddings.<prompt>` lists (`item_embeddings`): `title`, the base model's
title embeddings (last layer, last token: rule title_embeddings, the grounded protocol's), the content
embedding of TIGER and MiniOneRec (the sid prompt's); `sasrec`, the SASRec surrogate's item
embeddings (trained on the train split), a collaborative index as Hua et al. (2023) compare with
content ones, in which items that follow the same histories share code prefixes (the cid prompt's);
both, side by side, as LETTER and LC-Rec mix the two signals (here without training: each source
centred and scaled to unit norm, so each weighs the same in the distances). Whatever the source, the
rows are centred and scaled to unit norm before clustering so that no direction of a raw hidden
state dominates the distances.

Collisions (items whose codes agree on every level): TIGER's resolution, one more level whose code
numbers the items sharing a code sequence (0, 1, ... in item-id order; 0 for an item alone), so every
ID is unique and its length is fixed (levels + 1). LC-Rec's Sinkhorn reassignment would keep the
length at `levels` but moves items away from their nearest centroid; TIGER's extra code keeps every
item's semantic codes and costs one token. Items with identical text always collide and are told
apart by that code alone.

Tokens: level l's code c is `<{letter}_{c}>` (letters a, b, c, ...; the extra level the next letter),
an ID their concatenation, e.g. `<a_12><b_3><c_40><d_0>`. `sid_items` writes the items table with the
ID as the title: the sid prompt's runs read it where the other runs read items.parquet, so every
prompt builder, scorer and protocol handles IDs as it handles titles; `sid_tokens` lists the added
tokens of such a table, in a fixed order (level, code), so training and evaluation add the same
token ids.

    python -m workflow.semantic_ids --items results/ml-100k/data/items.parquet \
        --samples results/ml-100k/data/samples.parquet \
        --embeddings results/ml-100k/llm/title_embeddings.parquet \
        --spec '{"levels": 3, "embeddings": ["title"], ...}' \
        --seed 42 --out results/ml-100k/data/codes_sid.parquet --out-items results/ml-100k/data/items_sid.parquet
"""
from __future__ import annotations

import logging
import re
import string
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow import cli
from workflow.io import write_parquet

log = logging.getLogger(__name__)

TOKEN = re.compile(r"<([a-z])_(\d+)>")
SID = re.compile(r"^(?:<[a-z]_\d+>)+$")
SCHEMA = pa.schema([("item_id", pa.string()), ("codes", pa.list_(pa.int32())), ("sid", pa.string())])


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """Centred, then each row scaled to unit L2 norm (a zero row stays zero)."""
    x = np.asarray(embeddings, dtype=np.float32)
    x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def residual_codes(embeddings: np.ndarray, levels: int, codebook_size: int, *, iterations: int = 20,
                   seed: int = 0) -> np.ndarray:
    """[n_items, levels] RQ k-means codes of the rows of `embeddings` (module docstring)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if codebook_size > n:
        raise ValueError(f"semantic_ids.codebook_size {codebook_size} exceeds the {n} items to cluster")
    codes = np.zeros((n, levels), dtype=np.int64)
    residual = x.copy()
    for level in range(levels):
        # 5 restarts keep the lowest-error clustering (faiss starts from random points, no k-means++)
        kmeans = faiss.Kmeans(d, codebook_size, niter=iterations, nredo=5, seed=seed + level, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=n)
        kmeans.train(residual)
        _, assigned = kmeans.index.search(residual, 1)
        codes[:, level] = assigned[:, 0]
        residual = residual - kmeans.centroids[codes[:, level]]
    return codes


def deduplicated(codes: np.ndarray) -> np.ndarray:
    """The codes with TIGER's extra level appended: the rank of each item among the items with its
    code sequence (rows in their given order)."""
    seen: dict[tuple, int] = {}
    extra = np.zeros(len(codes), dtype=np.int64)
    for row, key in enumerate(map(tuple, codes)):
        extra[row] = seen.get(key, 0)
        seen[key] = extra[row] + 1
    return np.concatenate([codes, extra[:, None]], axis=1)


def sid_string(codes) -> str:
    if len(codes) > len(string.ascii_lowercase):
        raise ValueError(f"{len(codes)} code levels: at most {len(string.ascii_lowercase)} (one letter each)")
    return "".join(f"<{string.ascii_lowercase[level]}_{int(code)}>" for level, code in enumerate(codes))


def semantic_ids(item_ids, embeddings: np.ndarray, spec: dict[str, Any], seed: int) -> pd.DataFrame:
    """item_id, codes (levels + 1 ints), sid of every item, in item-id order; collision rate and code
    usage logged."""
    order = np.argsort(np.asarray(item_ids, dtype=str), kind="stable")
    ids = np.asarray(item_ids, dtype=str)[order]
    raw = residual_codes(normalised(np.asarray(embeddings)[order]), spec["levels"], spec["codebook_size"],
                         iterations=spec["iterations"], seed=seed)
    codes = deduplicated(raw)
    _, counts = np.unique(raw, axis=0, return_counts=True)
    colliding = int(counts[counts > 1].sum())
    usage = ", ".join(f"level {lv + 1} {len(np.unique(raw[:, lv]))}/{spec['codebook_size']}"
                      for lv in range(raw.shape[1]))
    log.info("%d items: %d distinct code sequences over %d levels; %d items (%.1f%%) share theirs (the extra level "
             "numbers them, at most %d per sequence); codes used: %s", len(ids), len(counts), raw.shape[1], colliding,
             100 * colliding / len(ids), counts.max(), usage)
    return pd.DataFrame({"item_id": ids, "codes": [list(map(int, c)) for c in codes],
                         "sid": [sid_string(c) for c in codes]})


def sid_item_table(items: pd.DataFrame, ids: pd.DataFrame) -> pd.DataFrame:
    """The items table with every item's semantic ID as its title and the title as `text` (items
    without an ID are dropped: the IDs cover the ranked item universe)."""
    sid = dict(zip(ids["item_id"].astype(str), ids["sid"]))
    table = items[items["item_id"].astype(str).isin(sid.keys())].copy()
    table["text"] = table["title"]  # the title, for the ID <-> title alignment tasks (sft.sid_alignment)
    table["title"] = table["item_id"].astype(str).map(sid)
    return table.reset_index(drop=True)


def sid_items(items: pd.DataFrame) -> bool:
    """Whether an items table shows its items by semantic ID (every title an ID)."""
    titles = items["title"].astype(str)
    return len(titles) > 0 and bool(titles.str.fullmatch(SID.pattern).all())


def item_token_ids(tokenizer) -> list[int]:
    """Ids of the item ID tokens added to `tokenizer` (workflow.llm.model.add_item_tokens), ascending."""
    return sorted(i for token, i in tokenizer.get_added_vocab().items() if TOKEN.fullmatch(token))


def sid_tokens(items: pd.DataFrame) -> list[str]:
    """The ID tokens an items table's titles use, ordered by (level, code): the tokens to add to
    the vocabulary, in the same order for training and evaluation. None for a title table."""
    if not sid_items(items):
        return []
    found = {(letter, int(code)) for title in items["title"].astype(str) for letter, code in TOKEN.findall(title)}
    return [f"<{letter}_{code}>" for letter, code in sorted(found)]


def item_embeddings(paths, item_ids) -> np.ndarray:
    """[n, H] the rows of one item embedding table, or of several side by side, each normalised
    first so that none dominates by its scale or width (module docstring); `semantic_ids`
    normalises the result as it does any embedding."""
    if len(paths) == 1:
        return embedding_rows(paths[0], item_ids)
    return np.concatenate([normalised(embedding_rows(path, item_ids)) for path in paths], axis=1)


def embedding_rows(path, item_ids) -> np.ndarray:
    """[n, H] rows of an item_id, embedding table (rule title_embeddings) in the order of
    `item_ids`; every item must have one."""
    table = pd.read_parquet(path)
    missing_columns = [c for c in ("item_id", "embedding") if c not in table.columns]
    if missing_columns:
        raise ValueError(f"{path}: missing columns {missing_columns}")
    table = table.set_index(table["item_id"].astype(str))
    missing = pd.Index(item_ids).difference(table.index)
    if len(missing):
        raise ValueError(f"{path}: no embedding for {len(missing)} items, e.g. {list(missing[:3])}")
    return np.stack(table.loc[list(item_ids), "embedding"].to_numpy()).astype(np.float32)


def main(argv=None) -> int:
    p = cli.parser("Semantic IDs of the items: RQ k-means codes of their embeddings, collisions numbered.")
    p.add_argument("--items", required=True, help="items.parquet (item_id, title)")
    p.add_argument("--samples", required=True, help="samples.parquet: the IDs cover its item universe")
    p.add_argument("--embeddings", required=True, nargs="+",
                   help="item embedding tables (item_id, embedding): title_embeddings.parquet, the surrogate's "
                        "item_embeddings.parquet, or both (joined side by side)")
    p.add_argument("--spec", type=cli.json_arg, required=True,
                   help='JSON {"levels": 3, "codebook_size": 32, "embeddings": ["title"], ...}')
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="codes_{prompt}.parquet (item_id, codes, sid)")
    p.add_argument("--out-items", required=True, help="the items table with the IDs as titles (the ID prompt's)")

    def run(args):
        from workflow.config import stage_settings
        from workflow.prepare import item_vocabulary

        block = dict(args.spec)
        sources = block.pop("embeddings", None)  # the names of the --embeddings tables, for the provenance
        if sources is None or len(sources) != len(args.embeddings):
            raise ValueError(f"--spec: `embeddings` must name each of the {len(args.embeddings)} --embeddings tables "
                             f"(semantic_ids.embeddings.<prompt>), got {sources!r}")
        spec = {**stage_settings({"semantic_ids": block}, {"semantic_ids": "semantic_ids"})["semantic_ids"],
                "embeddings": sources}
        items = pd.read_parquet(args.items)
        items["item_id"] = items["item_id"].astype(str)
        universe = sorted(item_vocabulary(pd.read_parquet(args.samples, columns=["history", "target", "candidates"]),
                                          items, source=args.items))
        table = semantic_ids(universe, item_embeddings(args.embeddings, universe), spec, args.seed)
        write_parquet(table, args.out, schema=SCHEMA, config={"semantic_ids": spec}, seed=args.seed)
        write_parquet(sid_item_table(items, table), args.out_items, config={"semantic_ids": spec}, seed=args.seed)

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
