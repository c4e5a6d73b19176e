"""Evaluate an LLM recommender (the base model, or the base model + a PEFT adapter) under the three
protocols of DESIGN section 6, on the stored samples and candidate sets, with the run's prompt
(`candidate` or `open`, workflow/runs.py): each prompt supports likelihood and one more protocol.

- likelihood / likelihood_norm: candidates ranked by log pi(title|prompt) under the run's prompt,
  summed / per token, from the shared-prefix scorer (`workflow.llm.scoring.candidate_logprobs`);
  HR@1, HR@5, NDCG@5, NDCG@10, MRR, AUC per sample (workflow.metrics, pessimistic ties).
- generation (candidate prompt): greedy answer to the candidate prompt. Matching rule (`matched_candidates`): answer
  and titles are case-folded and their whitespace collapsed; a candidate title is found when it
  occurs as a substring of the answer, except that an occurrence lying inside an occurrence of a
  LONGER found title does not count (answer "Aliens (1986)" names "Aliens (1986)", not also
  "Aliens"; "Alien and Aliens" names both). The answer is valid when exactly one candidate is found;
  two candidates with the same normalised title are both found, hence invalid. Titles are matched
  as the prompt showed them (clipped to llm.max_title_tokens). Per sample: valid (0/1), hit (1 iff
  valid and the found candidate is the target); the summary adds hr@1_valid = hits / valid.
  Each answer also gets one category (`answer_category`): valid, or the error `several`, `history`,
  `outside` or `nothing`, each a per-sample 0/1 metric, so their rates and ValidRatio sum to 1.
- generation_constrained (candidate prompt): greedy decoding that may only write one of the
  candidate titles as the prompt shows them, then the end of the answer (a prefix tree over the
  candidates' answer tokens, `transformers`' prefix_allowed_tokens_fn), so HR@1 measures the
  choice alone; valid and hit as for generation (valid is 1 unless two candidates share a title).
- likelihood_reversed (candidate prompt): likelihood re-scored with every sample's candidates listed
  in reversed order in the prompt (position bias); its candidate metrics and top_changed (1 when
  the top candidate differs from the forward order's). It scores the forward order too, so the
  likelihood protocols are reported with it.
- grounded (open prompt): greedy answer to the open prompt, embedded by the BASE model (an adapter is disabled
  for embedding), all items ranked by L2 distance to the title embeddings (faiss). History items
  other than the target are excluded from the ranking, as workflow.metrics.full_ranking_ranks does
  for the surrogate; HR@K, NDCG@K for K in 1, 5, 10, 20. The ranked items are the dataset's item
  universe (`workflow.prepare.item_vocabulary`: every item of any sample), the surrogate's items.

Generation and grounded ranking decode up to `max_new_tokens` per sample (constrained generation
up to the longest candidate answer); with `evaluation.generation_samples` they run on a seeded
subset of the samples (`generation_subset`, the same for every run, so their paired comparisons
hold), while likelihood scores all samples.
Each batch of prompts is encoded once: its KV cache serves the candidate scoring and both decodings.

Ranks in predictions.parquet are 0-based (0 = the target comes first), as in workflow.metrics.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from workflow import cli, metrics
from workflow.io import write_parquet
from workflow.llm import grounding, llara
from workflow.llm.model import load_for_evaluation  # noqa: F401  (the evaluation's loading, used by callers as evaluate.load_for_evaluation)
from workflow.prepare import item_vocabulary

log = logging.getLogger(__name__)
# rows of a batch -> (the scorer's inputs_embeds_fn or None, a context manager around the batch's passes)
SampleHooks = Callable[[Sequence[int]], "tuple[Callable | None, contextlib.AbstractContextManager]"]

GROUNDED_TOP = 20
ENCODE_CHUNK = 256  # open answers embedded and ranked this many at a time (bounds the score matrix)

PREDICTIONS_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("split", pa.string()), ("user_id", pa.string()), ("target", pa.string()),
    ("candidates", pa.list_(pa.string())),
    ("candidate_logprob", pa.list_(pa.float32())), ("candidate_tokens", pa.list_(pa.int32())),
    ("target_rank", pa.int32()), ("target_rank_norm", pa.int32()),
    ("generated", pa.string()), ("matched_item", pa.string()),
    ("open_generated", pa.string()), ("grounded_top", pa.list_(pa.string())), ("grounded_target_rank", pa.int32()),
    ("answer_category", pa.string()), ("constrained_generated", pa.string()), ("constrained_item", pa.string()),
    ("candidate_logprob_reversed", pa.list_(pa.float32())), ("target_rank_reversed", pa.int32()),
])
METRICS_SCHEMA = pa.schema([(c, pa.float64() if c == "value" else pa.string()) for c in metrics.FRAME_COLUMNS])


# ---------------------------------------------------------------------------------------------
# generation protocol: which candidate does an answer name?

def normalize(text: str) -> str:
    return " ".join(text.casefold().split())


def matched_candidates(answer: str, titles: Sequence[str]) -> list[int]:
    """Indices of the candidate titles the answer names (rule in the module docstring).
    Written by hand: the containment rule between overlapping titles is ours."""
    text = normalize(answer)
    norm = [normalize(t) for t in titles]
    spans = {}
    for i, title in enumerate(norm):
        if title:
            starts = [m.start() for m in re.finditer(f"(?={re.escape(title)})", text)]  # overlapping too
            if starts:
                spans[i] = [(s, s + len(title)) for s in starts]

    def inside_longer(i: int, span: tuple[int, int]) -> bool:
        return any(len(norm[j]) > len(norm[i]) and a <= span[0] and span[1] <= b
                   for j, other in spans.items() for a, b in other)

    return sorted(i for i, found in spans.items() if any(not inside_longer(i, s) for s in found))


def match_answer(answer: str, titles: Sequence[str]) -> int | None:
    """The index of the one candidate the answer names, or None (no candidate, or several)."""
    found = matched_candidates(answer, titles)
    return found[0] if len(found) == 1 else None


ANSWER_ERRORS = ("several", "history", "outside", "nothing")


def names_any(answer: str, titles: Sequence[str]) -> bool:
    """Whether the answer names any of the titles (the rule of `matched_candidates`). A title whose
    normalised form is not a substring of the answer cannot be found by the matcher, so it is
    dropped first: that keeps a scan of the whole catalogue cheap."""
    text = normalize(answer)
    return bool(matched_candidates(answer, [t for t in titles if (norm := normalize(t)) and norm in text]))


def answer_category(answer: str, candidate_titles: Sequence[str], history_titles: Sequence[str],
                    other_titles: Sequence[str]) -> str:
    """What a free answer names, the first of these that applies (precedence from top to bottom):

    - `several`: two or more candidates (`matched_candidates`);
    - `valid`: exactly one candidate (what `match_answer` accepts);
    - `history`: no candidate, but an item of the sample's history;
    - `outside`: no candidate or history item, but another item of the catalogue (`other_titles`:
      the catalogue without the sample's candidates and history);
    - `nothing`: no item at all.

    One category per answer, so ValidRatio and the rates of the four errors sum to 1."""
    found = matched_candidates(answer, candidate_titles)
    if len(found) > 1:
        return "several"
    if found:
        return "valid"
    if names_any(answer, history_titles):
        return "history"
    if names_any(answer, other_titles):
        return "outside"
    return "nothing"


# ---------------------------------------------------------------------------------------------
# constrained generation: only a candidate's answer tokens, as a prefix tree

def answer_trie(answers: Sequence[Sequence[int]]) -> dict:
    """Prefix tree of answer token sequences: nested {token id: subtree}; an answer ends in a leaf
    (its last token, the end of the answer, has no continuation)."""
    root: dict = {}
    for answer in answers:
        node = root
        for token in answer:
            node = node.setdefault(token, {})
    return root


def next_tokens(trie: dict, prefix: Sequence[int], fallback: int) -> list[int]:
    """The tokens that continue `prefix` inside the trie. After a complete answer (a leaf), or off
    the trie (a row `generate` has finished and pads), only `fallback`: the processor needs a
    non-empty list, and a finished row's token is replaced by padding anyway."""
    node = trie
    for token in prefix:
        node = node.get(token)
        if node is None:
            return [fallback]
    return list(node) or [fallback]


def constrained_tokens_fn(answers: Sequence[Sequence[Sequence[int]]], width: int, fallback: int):
    """`prefix_allowed_tokens_fn` for `generate` on a batch: row b may only write one of
    answers[b]; `width` is the padded prompt width (the generated part follows it)."""
    tries = [answer_trie(a) for a in answers]

    def allowed(row: int, ids: torch.Tensor) -> list[int]:
        return next_tokens(tries[row], ids[width:].tolist(), fallback)

    return allowed


# ---------------------------------------------------------------------------------------------
# model passes

def base_model_only(model) -> contextlib.AbstractContextManager:
    """Run the BASE model: a PEFT model's adapter is switched off inside the block."""
    from peft import PeftModel

    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def batches(order: Sequence[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield list(order[start:start + batch_size])


def by_length(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Indices sorted by sequence length (longest first): batches hold similar lengths, little padding."""
    return np.argsort([-len(s) for s in sequences], kind="stable")


def generation_config(tokenizer, max_new_tokens: int):
    """Greedy decoding that stops at the end of the answer (end-of-turn) or end of text."""
    from transformers import GenerationConfig

    from workflow.llm.prompts import end_of_answer_id

    stop = sorted({end_of_answer_id(tokenizer), tokenizer.eos_token_id} - {None})
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer),
                            eos_token_id=stop, use_cache=True)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def no_sample_hooks(rows: Sequence[int]):
    return None, contextlib.nullcontext()


class PassOutputs(NamedTuple):
    logprob: np.ndarray | None     # [N, C] log pi(y|x) summed (float32)
    tokens: np.ndarray | None      # [N, C] answer token counts
    answers: list[str] | None      # free greedy answers
    constrained: list[str] | None  # greedy answers restricted to the allowed answers


def decode_from_cache(model, tokenizer, cache, config, allowed_tokens_fn=None) -> list[str]:
    """Greedy answers continuing the cached prompts (optionally restricted by
    `prefix_allowed_tokens_fn`). The cache is cropped back to the prompts afterwards, so another
    decoding of the same batch reuses it."""
    cached = cache.past.get_seq_length()
    try:  # generate feeds only the last prompt token: the rest is in the cache
        out = model.generate(input_ids=cache.input_ids, attention_mask=cache.attention_mask,
                             past_key_values=cache.past, generation_config=config,
                             prefix_allowed_tokens_fn=allowed_tokens_fn)
    finally:
        grown = cache.past.get_seq_length() - cached
        if grown > 0:
            cache.past.crop(-grown)  # transformers 5: a negative count removes that many tokens
    width = cache.input_ids.shape[1]
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


@torch.no_grad()
def encoded_passes(model, tokenizer, prompt_ids, answer_ids=None, *, max_new_tokens: int = 0,
                   constrain_to=None, batch_size: int, autocast: Callable,
                   sample_hooks: SampleHooks | None = None) -> PassOutputs:
    """Each batch of prompts (similar lengths together) is encoded ONCE; its KV cache serves
    candidate scoring (when `answer_ids` is given), free greedy generation (when max_new_tokens > 0)
    and constrained greedy generation (when `constrain_to` is given: per prompt, the answer token
    sequences it may write, up to the longest of them).
    `sample_hooks(rows) -> (inputs_embeds_fn or None, context manager)` plugs a method's per-sample
    parts into a batch of those rows (LLaRA's item embeddings in the prompt, iLoRA's gate); the
    context holds for every pass of the batch. Rows of the outputs are in the order of `prompt_ids`.
    """
    from workflow.llm.prompts import end_of_answer_id
    from workflow.llm.scoring import cached_candidate_logprobs, encode_prompts

    n = len(prompt_ids)
    score, generate, constrain = answer_ids is not None, max_new_tokens > 0, constrain_to is not None
    logprob = np.zeros((n, len(answer_ids[0])), dtype=np.float32) if score else None
    tokens = np.zeros((n, len(answer_ids[0])), dtype=np.int64) if score else None
    answers = [""] * n if generate else None
    constrained = [""] * n if constrain else None
    config = generation_config(tokenizer, max_new_tokens) if generate else None
    hooks = sample_hooks or no_sample_hooks
    for chosen in batches(by_length(prompt_ids), batch_size):
        embeds_fn, context = hooks(chosen)
        with autocast(), context:
            cache = encode_prompts(model, [prompt_ids[i] for i in chosen], pad_id(tokenizer),
                                   inputs_embeds_fn=embeds_fn)
            if score:
                lp, nt = cached_candidate_logprobs(model, cache, [answer_ids[i] for i in chosen])
                logprob[chosen], tokens[chosen] = lp.float().cpu().numpy(), nt.cpu().numpy()
            if generate:
                for i, answer in zip(chosen, decode_from_cache(model, tokenizer, cache, config)):
                    answers[i] = answer
            if constrain:
                allowed = [constrain_to[i] for i in chosen]
                longest = max(len(a) for sample in allowed for a in sample)
                allowed_fn = constrained_tokens_fn(allowed, cache.input_ids.shape[1], end_of_answer_id(tokenizer))
                config_c = generation_config(tokenizer, longest)
                for i, answer in zip(chosen, decode_from_cache(model, tokenizer, cache, config_c, allowed_fn)):
                    constrained[i] = answer
    return PassOutputs(logprob, tokens, answers, constrained)


def prompt_passes(model, tokenizer, prompt_ids, answer_ids=None, *, max_new_tokens: int = 0, batch_size: int,
                  autocast: Callable, sample_hooks: SampleHooks | None = None
                  ) -> tuple[np.ndarray | None, np.ndarray | None, list[str] | None]:
    """(log pi(y|x) summed [N, C] float32 or None, answer tokens [N, C] or None, free greedy answers
    or None) of `encoded_passes`, without constrained decoding."""
    return encoded_passes(model, tokenizer, prompt_ids, answer_ids, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, autocast=autocast, sample_hooks=sample_hooks)[:3]


def likelihood_scores(model, tokenizer, prompt_ids, answer_ids, batch_size: int, autocast: Callable
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(log pi(y|x) summed [N, C] float32, answer tokens [N, C] int) for every sample's candidates."""
    logprob, tokens, _ = prompt_passes(model, tokenizer, prompt_ids, answer_ids, batch_size=batch_size,
                                       autocast=autocast)
    return logprob, tokens


def greedy_answers(model, tokenizer, prompt_ids, max_new_tokens: int, batch_size: int, autocast: Callable) -> list[str]:
    """Greedy decoding (KV cache) of every prompt, batched with left padding; the decoded answers."""
    return prompt_passes(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         autocast=autocast)[2]


def grounded_ranking(queries: np.ndarray, index, target_index: np.ndarray, history_index: Sequence[Sequence[int]],
                     top: int = GROUNDED_TOP) -> tuple[np.ndarray, np.ndarray]:
    """(0-based target rank among all items [N], top-`top` item positions [N, top]) from L2 distances
    of the query embeddings to the indexed titles; each row's history items (not its target) are
    excluded from both, as in workflow.metrics.full_ranking_ranks."""
    ranks = np.zeros(len(queries), dtype=np.int64)
    tops = np.zeros((len(queries), min(top, index.ntotal)), dtype=np.int64)
    for start in range(0, len(queries), ENCODE_CHUNK):
        rows = slice(start, start + ENCODE_CHUNK)
        scores = grounding.l2_scores(index, queries[rows])
        targets, history = target_index[rows], history_index[rows]
        ranks[rows] = metrics.full_ranking_ranks(scores, targets, exclude=history)
        for r, (hist, target) in enumerate(zip(history, targets)):
            scores[r, [h for h in hist if h != target]] = -np.inf
        tops[rows] = grounding.top_k(scores, top)
    return ranks, tops


# ---------------------------------------------------------------------------------------------
# the evaluation of one model on one set of samples

def generation_subset(sample_ids: Sequence[str], n: int | None, seed: int) -> np.ndarray:
    """Boolean mask of the samples the generation protocols decode: `n` of them drawn by a seeded
    generator from the sorted ids (independent of row order and of the model), all when n is None."""
    ids = np.asarray(sample_ids, dtype=str)
    if n is None or n >= len(ids):
        return np.ones(len(ids), dtype=bool)
    chosen = np.random.default_rng([seed, 0x6E4]).choice(np.sort(ids), size=n, replace=False)
    return np.isin(ids, chosen)


def prompt_inputs(samples: pd.DataFrame, items: pd.DataFrame, tokenizer, domain: str, llm: dict,
                  item_marker: str | None = None) -> dict[str, list]:
    """Token ids of the candidate and open prompts (with `item_marker` after every listed title:
    the hybrid prompt) and of every candidate's answer, and the candidate and history titles as the
    prompt shows them (clipped)."""
    from workflow.llm import prompts

    titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
    budget = dict(max_title_tokens=llm["max_title_tokens"], max_prompt_tokens=llm["max_prompt_tokens"],
                  item_marker=item_marker)
    needed = {i for seq in samples["candidates"] for i in seq} | {i for seq in samples["history"] for i in seq}
    unknown = sorted(needed - titles.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} item ids of the samples are not in the items table, e.g. {unknown[:3]}")
    clipped = {i: prompts.clip_title(tokenizer, titles[i], llm["max_title_tokens"]) for i in sorted(needed)}
    answer = {}
    out = {"candidate_prompt": [], "open_prompt": [], "answers": [], "shown_titles": [], "shown_history": []}
    for history, candidates in zip(samples["history"], samples["candidates"]):
        history_titles = [titles[i] for i in history]
        candidate_titles = [titles[i] for i in candidates]
        out["candidate_prompt"].append(prompts.candidate_prompt_ids(tokenizer, history_titles, candidate_titles,
                                                                    domain, **budget))
        out["open_prompt"].append(prompts.open_prompt_ids(tokenizer, history_titles, domain, **budget))
        for i in candidates:
            if i not in answer:
                answer[i] = prompts.answer_ids(tokenizer, clipped[i])
        out["answers"].append([answer[i] for i in candidates])
        out["shown_titles"].append([clipped[i] for i in candidates])
        out["shown_history"].append([clipped[i] for i in history])
    return out


def choice_values(answers: Sequence[str | None], titles: Sequence[Sequence[str]], decode: np.ndarray,
                  target_col: np.ndarray) -> tuple[dict[str, np.ndarray], list[int | None]]:
    """({valid, hit} per sample, NaN where not decoded; the column of the candidate each answer
    names, or None) of a generation protocol (match rule in the module docstring)."""
    found = [match_answer(a, t) if d else None for a, t, d in zip(answers, titles, decode)]
    valid = np.array([f is not None for f in found], dtype=np.float64)
    hit = np.array([f is not None and f == t for f, t in zip(found, target_col)], dtype=np.float64)
    return {"valid": np.where(decode, valid, np.nan), "hit": np.where(decode, hit, np.nan)}, found


def shown_catalogue(items: pd.DataFrame, tokenizer, max_title_tokens: int) -> dict[str, str]:
    """item id -> title as a prompt would show it (clipped), for every item of `items`."""
    from workflow.llm.prompts import clip_title

    return {i: clip_title(tokenizer, t, max_title_tokens)
            for i, t in zip(items["item_id"].astype(str), items["title"].astype(str))}


def answer_categories(answers: Sequence[str | None], decode: np.ndarray, inputs: dict[str, list],
                      candidates: Sequence[Sequence[str]], histories: Sequence[Sequence[str]],
                      catalogue: dict[str, str]) -> list[str | None]:
    """`answer_category` of every decoded answer (None where not decoded): titles as the prompt
    shows them; the catalogue without the sample's candidates and history is its `outside`."""
    categories: list[str | None] = []
    for row, answer in enumerate(answers):
        if not decode[row]:
            categories.append(None)
            continue
        known = set(candidates[row]) | set(histories[row])
        others = [title for item, title in catalogue.items() if item not in known]
        categories.append(answer_category(answer, inputs["shown_titles"][row], inputs["shown_history"][row], others))
    return categories


def category_values(categories: Sequence[str | None], decode: np.ndarray) -> dict[str, np.ndarray]:
    """The four answer errors as per-sample 0/1 values, NaN where not decoded."""
    return {error: np.where(decode, np.array([c == error for c in categories], dtype=np.float64), np.nan)
            for error in ANSWER_ERRORS}


def reversed_candidates(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples with every candidate list in reversed order (the same candidates)."""
    return samples.assign(candidates=[list(reversed(c)) for c in samples["candidates"]])


def reversed_order_logprobs(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, *, prompt: str,
                            domain: str, llm: dict, batch_size: int, autocast: Callable,
                            item_marker: str | None = None,
                            hooks_for: Callable[[pd.DataFrame, list], SampleHooks] | None = None) -> np.ndarray:
    """log pi(title|prompt) summed [N, C] of every candidate under the run's prompt built with the
    candidates in reversed order, columns in the samples' own candidate order. The open prompt does
    not list candidates, so there it equals the forward scores."""
    flipped = reversed_candidates(samples)
    inputs = prompt_inputs(flipped, items, tokenizer, domain, llm, item_marker)
    prompt_ids = inputs[f"{prompt}_prompt"]
    hooks = hooks_for(flipped, prompt_ids) if hooks_for is not None else None
    logprob, _, _ = prompt_passes(model, tokenizer, prompt_ids, inputs["answers"], batch_size=batch_size,
                                  autocast=autocast, sample_hooks=hooks)
    return np.ascontiguousarray(logprob[:, ::-1])


def position_bias_values(forward: np.ndarray, flipped: np.ndarray, target_col: np.ndarray) -> dict[str, np.ndarray]:
    """likelihood_reversed: the candidate metrics of the reversed-order scores (columns in the
    forward order), and top_changed against the forward order's scores."""
    return metrics.candidate_metrics(flipped, target_col) | {"top_changed": metrics.top_changed(forward, flipped)}


def evaluate(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, *, protocols: Sequence[str],
             domain: str, llm: dict, evaluation: dict, autocast: Callable = contextlib.nullcontext,
             title_embeddings: np.ndarray | None = None, prompt: str = "candidate",
             seed: int = 0, item_marker: str | None = None,
             hooks_for: Callable[[pd.DataFrame, list], SampleHooks] | None = None,
             decode_mask: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """(predictions frame, protocol -> metric -> per-sample values), rows in the order of `samples`;
    a protocol run on a subset (generation_samples) has NaN for the other samples.
    `title_embeddings` [n_items, H] in the row order of `items` (grounded protocol only).
    A hybrid-prompt model (workflow/llm/llara.py) passes its `item_marker` and
    `hooks_for(samples, prompt_ids) -> sample_hooks` (see encoded_passes). `decode_mask`: the samples
    to decode, when the caller drew the generation subset over more samples than these (a shard)."""
    from workflow.runs import PROMPT_PROTOCOLS

    unsupported = [p for p in protocols if p not in PROMPT_PROTOCOLS[prompt]]
    if unsupported:
        raise ValueError(f"protocol(s) {unsupported} need the other prompt than {prompt!r} "
                         f"(the {prompt} prompt supports {', '.join(PROMPT_PROTOCOLS[prompt])})")
    n = len(samples)
    candidates = [list(map(str, c)) for c in samples["candidates"]]
    target_col = metrics.target_columns(candidates, samples["target"].astype(str).tolist(),
                                        samples["sample_id"].astype(str).tolist())
    inputs = prompt_inputs(samples, items, tokenizer, domain, llm, item_marker)
    prompt_ids = inputs[f"{prompt}_prompt"]
    all_hooks = hooks_for(samples, prompt_ids) if hooks_for is not None else no_sample_hooks
    batch, new_tokens = evaluation["batch_size"], evaluation["max_new_tokens"]
    pred = {"sample_id": samples["sample_id"].astype(str).to_numpy(), "split": samples["split"].astype(str).to_numpy(),
            "user_id": samples["user_id"].astype(str).to_numpy(), "target": samples["target"].astype(str).to_numpy(),
            "candidates": candidates}
    values: dict[str, dict[str, np.ndarray]] = {}

    # likelihood_reversed is read against the forward order, which it therefore scores too
    score = "likelihood" in protocols or "likelihood_reversed" in protocols
    free = next((p for p in protocols if p in ("generation", "grounded")), None)
    constrained = "generation_constrained" in protocols
    if not (free or constrained):
        decode = np.zeros(n, dtype=bool)
    elif decode_mask is not None:
        decode = np.asarray(decode_mask, dtype=bool)
    else:
        decode = generation_subset(pred["sample_id"], evaluation.get("generation_samples"), seed)
    logprob = np.zeros((n, len(candidates[0])), dtype=np.float32) if score else None
    tokens = np.zeros_like(logprob, dtype=np.int64) if score else None
    answers: list[str | None] = [None] * n
    constrained_answers: list[str | None] = [None] * n
    # One encoding per prompt serves scoring and both decodings: the decoded subset in one pass, the
    # rest scored only.
    for rows, decoding in ((np.flatnonzero(decode), True), (np.flatnonzero(~decode), False)):
        if len(rows) == 0 or not (score or decoding):
            continue
        start = time.perf_counter()
        out = encoded_passes(model, tokenizer, [prompt_ids[i] for i in rows],
                             [inputs["answers"][i] for i in rows] if score else None,
                             max_new_tokens=new_tokens if decoding and free else 0,
                             constrain_to=[inputs["answers"][i] for i in rows] if decoding and constrained else None,
                             batch_size=batch, autocast=autocast,
                             sample_hooks=lambda chosen, rows=rows: all_hooks(rows[chosen]))
        if score:
            logprob[rows], tokens[rows] = out.logprob, out.tokens
        for k, i in enumerate(rows):
            answers[i] = out.answers[k] if out.answers is not None else None
            constrained_answers[i] = out.constrained[k] if out.constrained is not None else None
        passes = ((["likelihood"] if score else []) + ([free] if decoding and free else [])
                  + (["generation_constrained"] if decoding and constrained else []))
        log.info("%s prompt, %s: %d samples in %.1f s", prompt, " + ".join(passes), len(rows),
                 time.perf_counter() - start)

    if score:
        normalised = logprob / tokens
        values["likelihood"] = metrics.candidate_metrics(logprob, target_col)
        values["likelihood_norm"] = metrics.candidate_metrics(normalised, target_col)
        pred |= {"candidate_logprob": list(logprob), "candidate_tokens": list(tokens.astype(np.int32)),
                 "target_rank": metrics.target_ranks(logprob, target_col),
                 "target_rank_norm": metrics.target_ranks(normalised, target_col)}

    if "likelihood_reversed" in protocols:
        start = time.perf_counter()
        flipped = reversed_order_logprobs(model, tokenizer, samples, items, prompt=prompt, domain=domain, llm=llm,
                                          batch_size=batch, autocast=autocast, item_marker=item_marker,
                                          hooks_for=hooks_for)
        values["likelihood_reversed"] = position_bias_values(logprob, flipped, target_col)
        pred |= {"candidate_logprob_reversed": list(flipped),
                 "target_rank_reversed": metrics.target_ranks(flipped, target_col)}
        log.info("likelihood_reversed on %d samples in %.1f s: hr@1 %.3f (forward %.3f), top changed %.3f", n,
                 time.perf_counter() - start, values["likelihood_reversed"]["hr@1"].mean(),
                 values["likelihood"]["hr@1"].mean(), values["likelihood_reversed"]["top_changed"].mean())

    if free == "generation":
        values["generation"], found = choice_values(answers, inputs["shown_titles"], decode, target_col)
        histories = [list(map(str, h)) for h in samples["history"]]
        categories = answer_categories(answers, decode, inputs, candidates, histories,
                                       shown_catalogue(items, tokenizer, llm["max_title_tokens"]))
        values["generation"] |= category_values(categories, decode)
        pred |= {"generated": answers, "answer_category": categories,
                 "matched_item": [None if f is None else c[f] for f, c in zip(found, candidates)]}
        log.info("generation on %d samples: %s", decode.sum(),
                 ", ".join(f"{m} {v[decode].mean():.3f}" for m, v in values["generation"].items()))

    if constrained:
        values["generation_constrained"], chosen = choice_values(constrained_answers, inputs["shown_titles"], decode,
                                                                 target_col)
        pred |= {"constrained_generated": constrained_answers,
                 "constrained_item": [None if f is None else c[f] for f, c in zip(chosen, candidates)]}
        log.info("generation_constrained on %d samples: %s", decode.sum(),
                 ", ".join(f"{m} {v[decode].mean():.3f}" for m, v in values["generation_constrained"].items()))

    if free == "grounded":
        if title_embeddings is None:
            raise ValueError("the grounded protocol needs the title embeddings (--title-embeddings)")
        start = time.perf_counter()
        rows = np.flatnonzero(decode)
        with base_model_only(model):
            queries = grounding.embed_texts(model, tokenizer, [answers[i] for i in rows], batch_size=max(batch, 32),
                                            autocast=autocast)
        position = {item: i for i, item in enumerate(items["item_id"].astype(str))}
        target_index = np.array([position[t] for t in pred["target"][rows]])
        history_index = [[position[i] for i in samples["history"].iloc[r]] for r in rows]
        ranks, tops = grounded_ranking(queries, grounding.item_index(title_embeddings), target_index, history_index)
        item_ids = items["item_id"].astype(str).to_numpy()
        per_sample = metrics.full_ranking_metrics(ranks)
        values["grounded"] = {}
        for name, v in per_sample.items():
            full = np.full(n, np.nan)
            full[rows] = v
            values["grounded"][name] = full
        top_lists: list[list[str] | None] = [None] * n
        rank_col: list[int | None] = [None] * n
        for j, r in enumerate(rows):
            top_lists[r], rank_col[r] = list(item_ids[tops[j]]), int(ranks[j])
        pred |= {"open_generated": answers, "grounded_top": top_lists, "grounded_target_rank": rank_col}
        log.info("grounded: %d samples embedded and ranked in %.1f s, hr@20 %.3f", len(rows),
                 time.perf_counter() - start, per_sample["hr@20"].mean())

    frame = pd.DataFrame({name: pred.get(name, [None] * n) for name in PREDICTIONS_SCHEMA.names})
    return frame, values


def evaluate_sharded(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, *, evaluation: dict, seed: int = 0,
                     **kwargs) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """`evaluate` with the samples split across the ranks of a torchrun job (round-robin), each
    rank's predictions and per-sample values gathered and merged back into sample order (on every
    rank; rank 0 writes). The generation subset is drawn over all samples first, so it is the one a
    single process decodes. One process: `evaluate` itself."""
    from workflow.llm import distributed

    n_ranks = distributed.world_size()
    if n_ranks <= 1:
        return evaluate(model, tokenizer, samples, items, evaluation=evaluation, seed=seed, **kwargs)
    decode = generation_subset(samples["sample_id"].astype(str), evaluation.get("generation_samples"), seed)
    rows = distributed.shard(np.arange(len(samples)))
    frame, values = evaluate(model, tokenizer, samples.iloc[rows].reset_index(drop=True), items,
                             evaluation=evaluation, seed=seed, decode_mask=decode[rows], **kwargs)
    parts = distributed.gather_objects((frame, values))
    merged = pd.DataFrame({c: distributed.unshard([list(f[c]) for f, _ in parts]) for c in frame.columns})
    merged_values = {protocol: {metric: np.asarray(distributed.unshard([list(v[protocol][metric]) for _, v in parts]))
                                for metric in per_metric} for protocol, per_metric in values.items()}
    return merged, merged_values


def metrics_table(samples: pd.DataFrame, values: dict[str, dict[str, np.ndarray]], *, dataset: str, method: str,
                  selection: str) -> pd.DataFrame:
    """The long per-sample table; samples a protocol did not evaluate (NaN, see generation_samples)
    have no rows."""
    frames = [metrics.ranking_metrics_frame(samples, per_metric, dataset=dataset, method=method, selection=selection,
                                            protocol=protocol) for protocol, per_metric in values.items()]
    if not frames:
        return pd.DataFrame(columns=metrics.FRAME_COLUMNS)
    return pd.concat(frames, ignore_index=True).dropna(subset=["value"]).reset_index(drop=True)


def settings(spec: dict[str, Any]) -> dict[str, Any]:
    """{llm, evaluation, domain, prompt, budget} from --spec, validated and completed by config/schema.yaml."""
    from workflow.config import stage_settings

    return stage_settings(spec, {"llm": "llm", "evaluation": "evaluation"})


def read_samples(path, splits: Sequence[str]) -> pd.DataFrame:
    samples = pd.read_parquet(path)
    needed = ["sample_id", "split", "user_id", "history", "target", "candidates"]
    missing = [c for c in needed if c not in samples.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    chosen = samples[samples["split"].isin(list(splits))].reset_index(drop=True)
    if chosen.empty:
        raise ValueError(f"{path}: no samples in splits {list(splits)}")
    chosen["history"] = chosen["history"].map(lambda h: [str(i) for i in h])
    chosen["candidates"] = chosen["candidates"].map(lambda c: [str(i) for i in c])
    empty = chosen["history"].map(len) == 0
    if empty.any():
        raise ValueError(f"{path}: sample '{chosen.loc[empty, 'sample_id'].iloc[0]}' has an empty history")
    return chosen


def main(argv=None) -> int:
    p = cli.parser("Evaluate an LLM recommender: candidate likelihood, generation, grounded full ranking.")
    p.add_argument("--model-dir", required=True, help="the base model folder")
    p.add_argument("--adapter", default=None, help="a PEFT adapter folder (omit for the untuned base model)")
    p.add_argument("--samples", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--title-embeddings", default=None, help="needed by the grounded protocol")
    p.add_argument("--surrogate", default=None, help="the surrogate folder: needed by llara and ilora adapters")
    p.add_argument("--spec", type=cli.json_arg, required=True,
                   help='JSON {"llm": {...}, "evaluation": {...}, "domain": "movie", "prompt": "open"}')
    cli.add_run_arguments(p)
    p.add_argument("--trained-on", default=None,
                   help="the dataset the adapter was trained on, when not --dataset (cross-domain transfer, "
                        "workflow/transfer.py): the metrics get a trained_on column")
    p.add_argument("--predictions", required=True)
    p.add_argument("--metrics", required=True)

    def run(args):
        from workflow.llm import distributed
        from workflow.llm.model import autocast, model_device

        s = settings(args.spec)
        llm, evaluation, domain, prompt = s["llm"], s["evaluation"], s["domain"], s["prompt"]
        torch.manual_seed(args.seed)
        samples = read_samples(args.samples, evaluation["splits"])
        items = pd.read_parquet(args.items, columns=["item_id", "title"])
        items["item_id"] = items["item_id"].astype(str)
        # grounded ranking ranks the dataset's item universe, the items the surrogate ranks too
        universe = item_vocabulary(pd.read_parquet(args.samples, columns=["history", "target", "candidates"]),
                                   items, source=args.items)
        items = items[items["item_id"].isin(set(universe))].reset_index(drop=True)
        embeddings = None
        if "grounded" in evaluation["protocols"]:
            if not args.title_embeddings:
                raise ValueError("evaluation.protocols has grounded: pass --title-embeddings")
            embeddings = grounding.read_title_embeddings(args.title_embeddings, items["item_id"].tolist())
        hybrid = {}
        if args.adapter and (Path(args.adapter) / llara.HYBRID_FILE).is_file():
            if not args.surrogate:
                raise ValueError(f"{args.adapter} is a llara/ilora adapter: pass --surrogate")
            model, tokenizer, parts = llara.load_for_evaluation(args.model_dir, args.adapter, args.surrogate,
                                                                llm["device"], llm["dtype"], llm["attention"],
                                                                llm["quantization"])
            hybrid = {"item_marker": llara.PLACEHOLDER,
                      "hooks_for": lambda frame, ids: llara.evaluation_hooks(parts, model, frame, ids, prompt,
                                                                             args.surrogate)}
        else:
            model, tokenizer = load_for_evaluation(args.model_dir, args.adapter, llm["device"], llm["dtype"],
                                                   llm["attention"], llm["quantization"])
        device = model_device(model)
        log.info("%s/%s/%s: %d samples (%s), %s prompt, protocols %s", args.dataset, args.run, args.selection,
                 len(samples), ", ".join(evaluation["splits"]), prompt, ", ".join(evaluation["protocols"]))
        predictions, values = evaluate_sharded(
            model, tokenizer, samples, items, protocols=evaluation["protocols"], domain=domain, llm=llm,
            evaluation=evaluation, autocast=lambda: autocast(device, llm["dtype"]), title_embeddings=embeddings,
            prompt=prompt, seed=args.seed, **hybrid)
        if not distributed.is_main():
            return
        table = metrics_table(samples, values, dataset=args.dataset, method=args.run, selection=args.selection)
        schema = METRICS_SCHEMA
        if args.trained_on:
            table.insert(1, "trained_on", args.trained_on)
            schema = METRICS_SCHEMA.insert(1, pa.field("trained_on", pa.string()))
        provenance = dict(config={"llm": llm, "evaluation": evaluation, "domain": domain, "prompt": prompt},
                          seed=args.seed,
                          model_dir=str(args.model_dir), adapter=str(args.adapter) if args.adapter else None)
        write_parquet(predictions, args.predictions, schema=PREDICTIONS_SCHEMA, **provenance)
        write_parquet(table, args.metrics, schema=schema, **provenance)
        means = table.groupby(["protocol", "metric"], sort=False)["value"].mean()
        for (protocol, metric), value in means.items():
            log.info("%s %s: %.4f", protocol, metric, value)

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
