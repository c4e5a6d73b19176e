"""Grounding generated text in the item catalogue (BIGRec, DEALRec, SOFT): embed a text as the last
layer's hidden state at its last token under the BASE model, and rank every item by the L2 distance
between that embedding and the item titles' embeddings (faiss IndexFlatL2, exact search).

Titles and generated answers go through the same `embed_texts` (plain text, no chat template, the
tokenizer's own special tokens), so the two sides are comparable. Output of the CLI: a Parquet with
item_id and embedding (list<float32>), computed once per dataset and shared by every method.
"""
from __future__ import annotations

import logging
from typing import Sequence

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from workflow import cli
from workflow.io import write_parquet
from workflow.llm.scoring import left_pad

log = logging.getLogger(__name__)

SCHEMA = pa.schema([("item_id", pa.string()), ("embedding", pa.list_(pa.float32()))])
MAX_TEXT_TOKENS = 64  # longer generated answers are cut (from the left: the last token is what counts)


def tokenize_texts(tokenizer, texts: Sequence[str], max_tokens: int = MAX_TEXT_TOKENS) -> list[list[int]]:
    """Token ids per text; an empty text becomes the EOS token so that it still has a last token."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(seq[-max_tokens:] if seq else [eos]) for seq in ids]


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32, autocast=None,
                max_tokens: int = MAX_TEXT_TOKENS) -> np.ndarray:
    """[len(texts), hidden] float32: last-layer hidden state (after the final norm) at the last token.
    Texts are sorted by length into batches to keep padding small; the result is in input order."""
    if len(texts) == 0:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    seqs = tokenize_texts(tokenizer, texts, max_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        ids, mask, positions = (t.to(device) for t in left_pad([seqs[i] for i in chosen], pad))
        with (autocast() if autocast else torch.autocast(device.type, enabled=False)):
            hidden = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                           logits_to_keep=1, use_cache=False).hidden_states[-1][:, -1]
        out[chosen] = hidden.float().cpu().numpy()
    return out


def item_index(embeddings: np.ndarray) -> faiss.IndexFlatL2:
    index = faiss.IndexFlatL2(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def l2_scores(index: faiss.IndexFlatL2, queries: np.ndarray, chunk_cells: int = 1 << 24) -> np.ndarray:
    """[n_queries, n_items] scores = -squared L2 distance, in item order, from a full faiss search
    (k = every item; queries in chunks so at most `chunk_cells` distances are held per search)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n_items = index.ntotal
    scores = np.empty((len(queries), n_items), dtype=np.float32)
    step = max(1, chunk_cells // max(n_items, 1))
    for start in range(0, len(queries), step):
        dist, labels = index.search(queries[start:start + step], n_items)
        rows = np.arange(len(dist))[:, None]
        scores[start + rows, labels] = -dist
    return scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """[n, k] item positions, best first; ties broken by item position (stable, deterministic)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def read_title_embeddings(path, item_ids: Sequence[str]) -> np.ndarray:
    """The embedding table in the order of `item_ids`; every item must be present."""
    from workflow.semantic_ids import embedding_rows

    return embedding_rows(path, item_ids)


def main(argv=None) -> int:
    p = cli.parser("Embed every item title with the base model (last layer, last token).")
    p.add_argument("--model-dir", required=True, help="the base model folder")
    p.add_argument("--items", required=True, help="items.parquet (item_id, title)")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")

    def run(args):
        from workflow.llm.model import autocast, load_for_evaluation

        items = pd.read_parquet(args.items, columns=["item_id", "title"])
        if items["title"].isna().any():
            raise ValueError(f"{args.items}: {int(items['title'].isna().sum())} items without a title")
        model, tokenizer = load_for_evaluation(args.model_dir, device=args.device, dtype=args.dtype)
        device = next(model.parameters()).device
        embeddings = embed_texts(model, tokenizer, items["title"].tolist(), args.batch_size,
                                 autocast=lambda: autocast(device, args.dtype))
        log.info("%d titles embedded, dimension %d", *embeddings.shape)
        table = pa.table({"item_id": items["item_id"].astype(str).tolist(),
                          "embedding": pa.array(list(embeddings), type=pa.list_(pa.float32()))})
        write_parquet(table, args.out, config={"model_dir": str(args.model_dir), "items": str(args.items)})

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
