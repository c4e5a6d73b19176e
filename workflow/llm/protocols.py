"""The evaluation protocols (DESIGN section 6): one function per protocol, registered in `RUNS`
against its row of the ONE table, workflow/protocol_table.py's `PROTOCOLS` (the prompts it supports,
the metrics it emits, its headline metrics, the popularity ranking it is read against, what it reads
of the evaluation's shared pass and of the stored inputs). workflow/llm/evaluate.py runs the
requested ones in the table's order; workflow/runs.py, the rules, workflow/summary.py and
workflow/study.py read the table alone. Adding a protocol: its row there, its function here (and its
name in config/schema.yaml's enum).

A protocol function takes the `EvalContext` (the model, the samples, their prompt inputs, the shared
pass's outputs) and returns its per-sample values {protocol: {metric: [N]}} (NaN for samples it did
not evaluate) and its columns of predictions.parquet. Under the run's prompt (`candidate` or `open`,
workflow/runs.py):

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
- catalogue (open and sid prompts): whole-catalogue generation. Beam search constrained to the
  answers of every catalogue item (its title under the open prompt, its semantic ID under the sid
  prompt; `workflow.llm.catalogue`), `evaluation.catalogue_beams` live beams, returns each sample's
  top 20 distinct items ranked by summed log-prob; history items other than the target excluded as
  in full_ranking; HR@K, NDCG@K for K in 1, 5, 10, 20 (the target's rank when the beam returned it,
  a miss otherwise) and, as checks, `invalid` and `duplicate`: returned outputs that are not
  catalogue items, and items returned twice (0 by construction of the prefix tree). On the decoded
  subset; read against popularity's and SASRec's full ranking of the same items.
- full_ranking: not an LLM protocol: the baselines' and SASRec's ranking of all items, listed for
  the popularity ranking it is read against.

Generation and grounded ranking decode up to `max_new_tokens` per sample (constrained generation
up to the longest candidate answer); with `evaluation.generation_samples` they run on a seeded
subset of the samples (`EvalContext.decode`, the same for every run, so their paired comparisons
hold), while likelihood scores all samples. Each batch of prompts is encoded once: its KV cache
serves the candidate scoring and both decodings (the shared pass, `EvalContext.passes`).

Torch, transformers and faiss are imported inside the functions, where they must wait: the
evaluation's command line loads them only for the protocols it runs.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow import metrics
from workflow.llm.prompts import prompt_inputs
from workflow.protocol_table import (ANSWER_ERRORS, CANDIDATE_METRICS, FULL_RANKING_METRICS, INPUTS,  # noqa: F401
                                     PROTOCOLS, Protocol, headlines, popularity_protocol, reads, resolve,
                                     supported)

if TYPE_CHECKING:
    from workflow.llm.inference import PassOutputs, SampleHooks

log = logging.getLogger(__name__)

GROUNDED_TOP = 20
ENCODE_CHUNK = 256  # open answers embedded and ranked this many at a time (bounds the score matrix)


@dataclass
class EvalContext:
    """What every protocol function reads: one model evaluated on one set of samples."""
    model: Any
    tokenizer: Any
    samples: pd.DataFrame            # sample_id, split, user_id, history, target, candidates
    items: pd.DataFrame              # item_id, title (the item universe, row order of title_embeddings)
    prompt: str                      # the run's prompt: candidate | open
    domain: str
    llm: dict
    evaluation: dict                 # batch_size, max_new_tokens, generation_samples, ...
    autocast: Callable
    inputs: dict[str, list]          # prompts.prompt_inputs of the samples
    candidates: list[list[str]]      # item ids per sample
    target_col: np.ndarray           # [N] column of the target among the candidates
    decode: np.ndarray               # [N] bool: the samples the decoding protocols decode
    title_embeddings: np.ndarray | None = None  # [n_items, H] (grounded)
    item_marker: str | None = None   # a hybrid-prompt model's marker after every listed title
    hooks_for: Callable[[pd.DataFrame, list], SampleHooks] | None = None  # see inference.encoded_passes
    passes: PassOutputs | None = None  # the shared pass: forward scores [N, C], answers (None where not decoded)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def batch_size(self) -> int:
        return self.evaluation["batch_size"]


class Reported(NamedTuple):
    values: dict[str, dict[str, np.ndarray]]  # protocol -> metric -> per-sample values
    columns: dict[str, Any]                   # predictions.parquet columns


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
# the protocols' per-sample values

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
    from workflow.llm.inference import prompt_passes

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


def grounded_ranking(queries: np.ndarray, index, target_index: np.ndarray, history_index: Sequence[Sequence[int]],
                     top: int = GROUNDED_TOP) -> tuple[np.ndarray, np.ndarray]:
    """(0-based target rank among all items [N], top-`top` item positions [N, top]) from L2 distances
    of the query embeddings to the indexed titles; each row's history items (not its target) are
    excluded from both, as in workflow.metrics.full_ranking_ranks."""
    from workflow.llm import grounding

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


def on_rows(per_sample: dict[str, np.ndarray], rows: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-sample values of the decoded `rows` spread over all `n` samples, NaN for the others."""
    values = {}
    for name, v in per_sample.items():
        full = np.full(n, np.nan)
        full[rows] = v
        values[name] = full
    return values


# ---------------------------------------------------------------------------------------------
# the protocol functions

def likelihood(ctx: EvalContext) -> Reported:
    """likelihood and likelihood_norm from the shared pass's forward scores."""
    logprob, tokens, target_col = ctx.passes.logprob, ctx.passes.tokens, ctx.target_col
    normalised = logprob / tokens
    values = {"likelihood": metrics.candidate_metrics(logprob, target_col),
              "likelihood_norm": metrics.candidate_metrics(normalised, target_col)}
    return Reported(values, {"candidate_logprob": list(logprob), "candidate_tokens": list(tokens.astype(np.int32)),
                             "target_rank": metrics.target_ranks(logprob, target_col),
                             "target_rank_norm": metrics.target_ranks(normalised, target_col)})


def likelihood_reversed(ctx: EvalContext) -> Reported:
    """The candidates re-scored listed in reversed order, read against the forward scores."""
    start = time.perf_counter()
    flipped = reversed_order_logprobs(ctx.model, ctx.tokenizer, ctx.samples, ctx.items, prompt=ctx.prompt,
                                      domain=ctx.domain, llm=ctx.llm, batch_size=ctx.batch_size,
                                      autocast=ctx.autocast, item_marker=ctx.item_marker, hooks_for=ctx.hooks_for)
    values = position_bias_values(ctx.passes.logprob, flipped, ctx.target_col)
    log.info("likelihood_reversed on %d samples in %.1f s: hr@1 %.3f (forward %.3f), top changed %.3f", ctx.n,
             time.perf_counter() - start, values["hr@1"].mean(),
             (metrics.target_ranks(ctx.passes.logprob, ctx.target_col) == 0).mean(), values["top_changed"].mean())
    return Reported({"likelihood_reversed": values},
                    {"candidate_logprob_reversed": list(flipped),
                     "target_rank_reversed": metrics.target_ranks(flipped, ctx.target_col)})


def generation(ctx: EvalContext) -> Reported:
    """The shared pass's free answers to the candidate prompt: valid, hit and the answer categories."""
    answers, decode, candidates = ctx.passes.answers, ctx.decode, ctx.candidates
    values, found = choice_values(answers, ctx.inputs["shown_titles"], decode, ctx.target_col)
    histories = [list(map(str, h)) for h in ctx.samples["history"]]
    categories = answer_categories(answers, decode, ctx.inputs, candidates, histories,
                                   shown_catalogue(ctx.items, ctx.tokenizer, ctx.llm["max_title_tokens"]))
    values |= category_values(categories, decode)
    log.info("generation on %d samples: %s", decode.sum(), ", ".join(f"{m} {v[decode].mean():.3f}"
                                                                    for m, v in values.items()))
    return Reported({"generation": values},
                    {"generated": answers, "answer_category": categories,
                     "matched_item": [None if f is None else c[f] for f, c in zip(found, candidates)]})


def generation_constrained(ctx: EvalContext) -> Reported:
    """The shared pass's answers constrained to the candidates' titles: valid and hit."""
    answers, decode = ctx.passes.constrained, ctx.decode
    values, chosen = choice_values(answers, ctx.inputs["shown_titles"], decode, ctx.target_col)
    log.info("generation_constrained on %d samples: %s", decode.sum(),
             ", ".join(f"{m} {v[decode].mean():.3f}" for m, v in values.items()))
    return Reported({"generation_constrained": values},
                    {"constrained_generated": answers,
                     "constrained_item": [None if f is None else c[f] for f, c in zip(chosen, ctx.candidates)]})


def grounded(ctx: EvalContext) -> Reported:
    """The shared pass's free answers to the open prompt embedded by the base model, all items
    ranked by L2 distance to their title embeddings."""
    from workflow.llm import grounding
    from workflow.llm.inference import base_model_only

    if ctx.title_embeddings is None:
        raise ValueError("the grounded protocol needs the title embeddings (--title-embeddings)")
    start = time.perf_counter()
    answers, n, items, samples = ctx.passes.answers, ctx.n, ctx.items, ctx.samples
    rows = np.flatnonzero(ctx.decode)
    with base_model_only(ctx.model):
        queries = grounding.embed_texts(ctx.model, ctx.tokenizer, [answers[i] for i in rows],
                                        batch_size=max(ctx.batch_size, 32), autocast=ctx.autocast)
    position = {item: i for i, item in enumerate(items["item_id"].astype(str))}
    target_index = np.array([position[t] for t in samples["target"].astype(str).to_numpy()[rows]])
    history_index = [[position[i] for i in samples["history"].iloc[r]] for r in rows]
    ranks, tops = grounded_ranking(queries, grounding.item_index(ctx.title_embeddings), target_index, history_index)
    item_ids = items["item_id"].astype(str).to_numpy()
    per_sample = metrics.full_ranking_metrics(ranks)
    values = on_rows(per_sample, rows, n)
    top_lists: list[list[str] | None] = [None] * n
    rank_col: list[int | None] = [None] * n
    for j, r in enumerate(rows):
        top_lists[r], rank_col[r] = list(item_ids[tops[j]]), int(ranks[j])
    log.info("grounded: %d samples embedded and ranked in %.1f s, hr@20 %.3f", len(rows),
             time.perf_counter() - start, per_sample["hr@20"].mean())
    return Reported({"grounded": values},
                    {"open_generated": answers, "grounded_top": top_lists, "grounded_target_rank": rank_col})


def catalogue(ctx: EvalContext) -> Reported:
    """The decoded samples' top items by beam search constrained to the catalogue's answers."""
    from workflow.llm import catalogue as search
    from workflow.llm.inference import no_sample_hooks, pad_id

    start = time.perf_counter()
    items, n, samples = ctx.items, ctx.n, ctx.samples
    item_ids = items["item_id"].astype(str).to_numpy()
    position = {item: i for i, item in enumerate(item_ids)}
    answers = search.catalogue_answers(ctx.tokenizer, items["title"].astype(str), ctx.llm["max_title_tokens"])
    rows = np.flatnonzero(ctx.decode)
    targets = np.array([position[t] for t in samples["target"].astype(str).to_numpy()[rows]], dtype=np.int64)
    exclude = [{position[i] for i in samples["history"].iloc[r]} - {t} for r, t in zip(rows, targets)]
    prompt_ids = ctx.inputs[f"{ctx.prompt}_prompt"]
    hooks = ctx.hooks_for(samples, prompt_ids) if ctx.hooks_for is not None else no_sample_hooks
    ranked = search.beam_search(ctx.model, [prompt_ids[r] for r in rows], search.catalogue_trie(answers),
                                width=ctx.evaluation["catalogue_beams"], top=max(metrics.FULL_RANKING_KS),
                                exclude=exclude, pad_id=pad_id(ctx.tokenizer), batch_size=ctx.batch_size,
                                autocast=ctx.autocast, sample_hooks=lambda chosen: hooks(rows[chosen]))
    ranks = search.target_ranks(ranked.items, ranked.scores, targets, len(item_ids))
    per_sample = metrics.full_ranking_metrics(ranks)
    per_sample["invalid"] = np.array([sum(not 0 <= i < len(item_ids) for i in found) for found in ranked.items],
                                     dtype=np.float64)
    per_sample["duplicate"] = np.array([len(found) - len(set(found)) for found in ranked.items], dtype=np.float64)
    values = on_rows(per_sample, rows, n)
    top_lists: list[list[str] | None] = [None] * n
    rank_col: list[int | None] = [None] * n
    for j, r in enumerate(rows):
        top_lists[r] = [str(item_ids[i]) for i in ranked.items[j]]
        rank_col[r] = int(ranks[j]) if ranks[j] < len(item_ids) else None
    seconds = time.perf_counter() - start
    log.info("catalogue: %d samples, %d beams over %d items in %.1f s (%.2f s/sample, %d decoding steps), "
             "hr@10 %.3f, invalid %d, duplicate %d", len(rows), ctx.evaluation["catalogue_beams"], len(item_ids),
             seconds, seconds / max(len(rows), 1), ranked.steps, per_sample["hr@10"].mean() if len(rows) else np.nan,
             int(per_sample["invalid"].sum()), int(per_sample["duplicate"].sum()))
    return Reported({"catalogue": values}, {"catalogue_top": top_lists, "catalogue_target_rank": rank_col})


# ---------------------------------------------------------------------------------------------
# the registry

# The protocols' functions, registered against the rows of workflow/protocol_table.py's PROTOCOLS (a
# row without a function is reported by another's: likelihood_norm by likelihood; full_ranking is
# the baselines').
RUNS: dict[str, Callable[[EvalContext], Reported]] = {
    "likelihood": likelihood, "grounded": grounded, "likelihood_reversed": likelihood_reversed,
    "generation": generation, "generation_constrained": generation_constrained, "catalogue": catalogue,
}
assert set(RUNS) <= set(PROTOCOLS), sorted(set(RUNS) - set(PROTOCOLS))


# predictions.parquet: the samples' columns, then the protocols' (`Protocol.columns`: a new protocol
# adds its own here)
PREDICTIONS_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("split", pa.string()), ("user_id", pa.string()), ("target", pa.string()),
    ("candidates", pa.list_(pa.string())),
    ("candidate_logprob", pa.list_(pa.float32())), ("candidate_tokens", pa.list_(pa.int32())),
    ("target_rank", pa.int32()), ("target_rank_norm", pa.int32()),
    ("generated", pa.string()), ("matched_item", pa.string()),
    ("open_generated", pa.string()), ("grounded_top", pa.list_(pa.string())), ("grounded_target_rank", pa.int32()),
    ("answer_category", pa.string()), ("constrained_generated", pa.string()), ("constrained_item", pa.string()),
    ("candidate_logprob_reversed", pa.list_(pa.float32())), ("target_rank_reversed", pa.int32()),
    ("catalogue_top", pa.list_(pa.string())), ("catalogue_target_rank", pa.int32()),
])
