"""Whole-catalogue generation: beam search constrained to the catalogue's answers (D3's decoding
over item titles; TIGER's / MiniOneRec's over semantic IDs), returning each sample's ranked top-K
distinct items with their summed log-probs.

The catalogue is a prefix tree (`catalogue_trie`) of every item's answer tokens (its title, or its
semantic ID, then the end-of-answer token); an item is complete when its end token is written.

Search (`beam_search`), per sample: live beams are answer prefixes inside the tree, scored by
log pi(prefix | prompt). Each step expands every live beam by every child its tree node allows;
an expansion that completes an item joins the sample's finished items (history items other than
the target are dropped there, as `workflow.metrics.full_ranking_ranks` excludes them), the others
compete for the `width` live slots (highest score first). A sample stops when it has no live beam,
or when `top` finished items all score at least the best live beam: log-probs only fall as a prefix
grows, so no later item can enter its top. Finished items do not take live slots, so a beam as wide
as the catalogue keeps every prefix and enumerates every item with its exact log-prob: the
exhaustive ranking (tested). Narrower beams trade recall for time (docs/catalogue.md).

Tree attention over one KV cache (written by hand: `transformers`' beam search copies the prompt
cache once per beam and reorders it every step, and a per-step `prefix_allowed_tokens_fn` call in
Python per beam): each batch of prompts is encoded once (`scoring.encode_prompts`); every step then
appends the sample's live beams' last tokens to the sample's ONE cache row, and a 4-D mask lets each
new token attend to the prompt, to its own ancestors' columns and to itself. Nothing is copied or
recomputed when beams are pruned or reordered; a pruned beam's columns stay in the cache, masked.
Positions continue the prompt's: a token at answer depth d sits at position (prompt length - 1 + d).
"""
from __future__ import annotations

import contextlib
import heapq
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from workflow.llm.prompts import clipped_answer_ids
from workflow.llm.scoring import _parts, attention_mask, encode_prompts

ITEMS = "items"  # the key of a tree node that completes items (its value: their catalogue positions)


def catalogue_answers(tokenizer, titles: Sequence[str], max_title_tokens: int) -> list[list[int]]:
    """Every catalogue item's answer token ids (its title, or its code ID under an ID prompt,
    then the end-of-answer token), in catalogue order: what the catalogue protocol decodes and rere's
    beam draws from."""
    return [clipped_answer_ids(tokenizer, str(t), max_title_tokens) for t in titles]


def catalogue_trie(answers: Sequence[Sequence[int]]) -> dict:
    """Prefix tree over the catalogue's answer token sequences: {token: child} per node; the node an
    answer ends in holds ITEMS: the positions of the items with that answer (two items may share a
    title). Every answer ends with the end-of-answer token, so no answer is a prefix of another."""
    root: dict = {}
    for position, answer in enumerate(answers):
        if not answer:
            raise ValueError(f"catalogue item {position} has an empty answer")
        node = root
        for token in answer:
            node = node.setdefault(int(token), {})
        node.setdefault(ITEMS, []).append(position)
    return root


class Ranked(NamedTuple):
    items: list[list[int]]      # per sample: catalogue positions, best first (at most `top`)
    scores: list[list[float]]   # their summed log-probs
    steps: int                  # decoding steps the batches took in total (one forward each)


class _Beam(NamedTuple):
    score: float
    node: dict
    token: int              # the token this beam feeds next (its last answer token)
    ancestors: tuple        # cache columns of its earlier answer tokens (and the last prompt token)
    depth: int              # answer tokens written so far


def _finish(finished: list, node: dict, score: float, exclude: set) -> None:
    for position in node.get(ITEMS, ()):
        if position not in exclude:
            finished.append((score, position))


def _kth_best(finished: list, top: int) -> float:
    return heapq.nlargest(top, finished)[-1][0] if len(finished) >= top else -np.inf


@torch.no_grad()
def beam_search(model, prompt_ids: Sequence[Sequence[int]], trie: dict, *, width: int, top: int,
                exclude: Sequence[set] | None = None, pad_id: int = 0, batch_size: int = 8,
                autocast: Callable | None = None, sample_hooks=None) -> Ranked:
    """Each prompt's `top` best catalogue items by constrained beam search of `width` live beams
    (module docstring); `exclude[b]`: catalogue positions never returned for prompt b. Ties (items
    with one answer) keep catalogue order. Rows in the order of `prompt_ids`. `sample_hooks(rows)
    -> (inputs_embeds_fn or None, context)` as in `workflow.llm.inference.encoded_passes`: the
    embeddings hook sees the prompts, the context holds for the whole search of the batch (a batch
    row is a sample at every step, so per-sample gates apply unchanged)."""
    if width < 1 or top < 1:
        raise ValueError(f"beam width and top must be positive, got width={width}, top={top}")
    exclude = exclude if exclude is not None else [set()] * len(prompt_ids)
    items: list[list[int]] = [[] for _ in prompt_ids]
    scores: list[list[float]] = [[] for _ in prompt_ids]
    steps = 0
    order = np.argsort([-len(p) for p in prompt_ids], kind="stable")  # similar lengths together
    for start in range(0, len(order), batch_size):
        rows = [int(r) for r in order[start:start + batch_size]]
        embeds_fn, context = sample_hooks(rows) if sample_hooks is not None else (None, contextlib.nullcontext())
        with (autocast() if autocast is not None else contextlib.nullcontext()), context:
            found, taken = _search_batch(model, [prompt_ids[r] for r in rows], trie, width, top,
                                         [exclude[r] for r in rows], pad_id, embeds_fn)
        steps += taken
        for r, ranked in zip(rows, found):
            items[r] = [position for _, position in ranked]
            scores[r] = [score for score, _ in ranked]
    return Ranked(items, scores, steps)


def _search_batch(model, prompts, trie, width, top, exclude, pad_id, inputs_embeds_fn):
    decoder, lm_head, config = _parts(model)
    device = lm_head.weight.device
    cache = encode_prompts(model, prompts, pad_id, inputs_embeds_fn=inputs_embeds_fn)
    B = len(prompts)
    prompt_keys = cache.attention_mask[:, :-1].bool()      # [B, P-1] the cached prompt's real columns
    columns = prompt_keys.shape[1]                            # the cache's width so far
    last_position = (cache.lengths - 1).to(device)            # the last prompt token's position
    mask_dtype = decoder.get_input_embeddings().weight.dtype
    # every sample starts with one beam feeding its last prompt token (depth 0)
    live = [[_Beam(0.0, trie, int(cache.input_ids[b, -1]), (), 0)] for b in range(B)]
    finished: list[list] = [[] for _ in range(B)]
    steps = 0
    while any(live):
        steps += 1
        slots = max(len(beams) for beams in live)
        tokens = torch.full((B, slots), pad_id, dtype=torch.long)
        depth = torch.zeros((B, slots), dtype=torch.long)
        # mask over [cache columns | the new slots]: prompt, ancestors, itself
        allowed = torch.zeros((B, slots, columns + slots), dtype=torch.bool)
        allowed[:, :, :prompt_keys.shape[1]] = prompt_keys[:, None, :].cpu()
        for b, beams in enumerate(live):
            for s in range(slots):
                allowed[b, s, columns + s] = True  # a padding slot attends to itself (never read)
            for s, beam in enumerate(beams):
                tokens[b, s], depth[b, s] = beam.token, beam.depth
                if beam.ancestors:
                    allowed[b, s, list(beam.ancestors)] = True
        positions = last_position[:, None] + depth.to(device)
        mask = attention_mask(allowed[:, None].to(device), config._attn_implementation, mask_dtype)
        hidden = decoder(input_ids=tokens.to(device), attention_mask=mask, position_ids=positions,
                         past_key_values=cache.past, use_cache=True).last_hidden_state
        logprobs = torch.log_softmax(lm_head(hidden).float(), dim=-1).cpu()
        new_columns = columns
        columns += slots
        for b, beams in enumerate(live):
            expansions = []
            for s, beam in enumerate(beams):
                children = [t for t in beam.node if t != ITEMS]
                if not children:
                    continue
                child_lp = logprobs[b, s, children].tolist()
                ancestors = beam.ancestors + (new_columns + s,)
                for token, lp in zip(children, child_lp):
                    child, score = beam.node[token], beam.score + lp
                    if ITEMS in child:
                        _finish(finished[b], child, score, exclude[b])
                    if any(t != ITEMS for t in child):
                        expansions.append(_Beam(score, child, token, ancestors, beam.depth + 1))
            kept = heapq.nlargest(width, expansions, key=lambda e: e.score)
            # stop early once `top` finished items beat every live prefix (log-probs only fall)
            live[b] = kept if kept and kept[0].score > _kth_best(finished[b], top) else []
    ranked = [sorted(f, key=lambda e: (-e[0], e[1]))[:top] for f in finished]
    return ranked, steps


def target_ranks(ranked_items: Sequence[Sequence[int]], ranked_scores: Sequence[Sequence[float]],
                 targets: Sequence[int], n_items: int) -> np.ndarray:
    """0-based pessimistic rank of each target among the returned items (ties with it count
    against it, as `workflow.metrics.full_ranking_ranks`); `n_items` where it was not returned."""
    ranks = np.full(len(targets), n_items, dtype=np.int64)
    for row, (found, score, target) in enumerate(zip(ranked_items, ranked_scores, targets)):
        if target in found:
            own = score[found.index(target)]
            ranks[row] = sum(s >= own for s in score) - 1
    return ranks
