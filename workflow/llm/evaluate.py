"""Evaluate an LLM recommender (the base model, or the base model + a PEFT adapter) under the three
protocols of DESIGN section 6, on the stored samples and candidate sets.

- likelihood / likelihood_norm: candidates ranked by log pi(title|prompt), summed / per token, from
  the shared-prefix scorer (`workflow.llm.scoring.candidate_logprobs`); HR@1, HR@5, NDCG@5,
  NDCG@10, MRR, AUC per sample (workflow.metrics, pessimistic ties).
- generation: greedy answer to the candidate prompt. Matching rule (`matched_candidates`): answer
  and titles are case-folded and their whitespace collapsed; a candidate title is found when it
  occurs as a substring of the answer, except that an occurrence lying inside an occurrence of a
  LONGER found title does not count (answer "Aliens (1986)" names "Aliens (1986)", not also
  "Aliens"; "Alien and Aliens" names both). The answer is valid when exactly one candidate is found;
  two candidates with the same normalised title are both found, hence invalid. Titles are matched
  as the prompt showed them (clipped to llm.max_title_tokens). Per sample: valid (0/1), hit (1 iff
  valid and the found candidate is the target); the summary adds hr@1_valid = hits / valid.
- grounded: greedy answer to the open prompt, embedded by the BASE model (an adapter is disabled
  for embedding), all items ranked by L2 distance to the title embeddings (faiss). History items
  other than the target are excluded from the ranking, as workflow.metrics.full_ranking_ranks does
  for the surrogate; HR@K, NDCG@K for K in 1, 5, 10, 20. The ranked items are the dataset's item
  universe (`workflow.prepare.item_vocabulary`: every item of any sample), the surrogate's items.

Ranks in predictions.parquet are 0-based (0 = the target comes first), as in workflow.metrics.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from workflow import cli, metrics
from workflow.io import write_parquet
from workflow.llm import grounding
from workflow.prepare import item_vocabulary

log = logging.getLogger(__name__)

GROUNDED_TOP = 20
ENCODE_CHUNK = 256  # open answers embedded and ranked this many at a time (bounds the score matrix)

PREDICTIONS_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("split", pa.string()), ("user_id", pa.string()), ("target", pa.string()),
    ("candidates", pa.list_(pa.string())),
    ("candidate_logprob", pa.list_(pa.float32())), ("candidate_tokens", pa.list_(pa.int32())),
    ("target_rank", pa.int32()), ("target_rank_norm", pa.int32()),
    ("generated", pa.string()), ("matched_item", pa.string()),
    ("open_generated", pa.string()), ("grounded_top", pa.list_(pa.string())), ("grounded_target_rank", pa.int32()),
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


# ---------------------------------------------------------------------------------------------
# model passes

def load_for_evaluation(model_dir, adapter=None, device="auto", dtype="auto", attention="auto"):
    """(model, tokenizer) in eval mode, no parameter requiring gradients; with `adapter`, the base
    model wrapped by the PEFT adapter. The no-grad attention (`resolve_attention(training=False)`),
    and the linear weights stored in the compute dtype (`train.cast_frozen_linears`: the results of
    autocast's per-matmul casts, without a cast of every weight at every generated token)."""
    from workflow.llm.model import load_model, resolve_dtype
    from workflow.llm.train import cast_frozen_linears

    model, tokenizer = load_model(model_dir, device=device, dtype=dtype, attention=attention, training=False)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    model.requires_grad_(False)
    cast_frozen_linears(model, resolve_dtype(dtype, device))
    return model.eval(), tokenizer


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


@torch.no_grad()
def prompt_passes(model, tokenizer, prompt_ids, answer_ids=None, *, max_new_tokens: int = 0, batch_size: int,
                  autocast: Callable) -> tuple[np.ndarray | None, np.ndarray | None, list[str] | None]:
    """Each batch of prompts (similar lengths together) is encoded ONCE; its KV cache serves both
    candidate scoring (when `answer_ids` is given) and greedy generation (when max_new_tokens > 0).

    Returns (log pi(y|x) summed [N, C] float32 or None, answer tokens [N, C] or None, decoded
    answers or None), rows in the order of `prompt_ids`.
    """
    from workflow.llm.scoring import cached_candidate_logprobs, encode_prompts

    n = len(prompt_ids)
    score, generate = answer_ids is not None, max_new_tokens > 0
    logprob = np.zeros((n, len(answer_ids[0])), dtype=np.float32) if score else None
    tokens = np.zeros((n, len(answer_ids[0])), dtype=np.int64) if score else None
    answers = [""] * n if generate else None
    config = generation_config(tokenizer, max_new_tokens) if generate else None
    for chosen in batches(by_length(prompt_ids), batch_size):
        with autocast():
            cache = encode_prompts(model, [prompt_ids[i] for i in chosen], pad_id(tokenizer))
            if score:
                lp, nt = cached_candidate_logprobs(model, cache, [answer_ids[i] for i in chosen])
                logprob[chosen], tokens[chosen] = lp.float().cpu().numpy(), nt.cpu().numpy()
            if generate:  # generate feeds only the last prompt token: the rest is in the cache
                out = model.generate(input_ids=cache.input_ids, attention_mask=cache.attention_mask,
                                     past_key_values=cache.past, generation_config=config)
        if generate:
            width = cache.input_ids.shape[1]
            for row, i in enumerate(chosen):
                answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return logprob, tokens, answers


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

def prompt_inputs(samples: pd.DataFrame, items: pd.DataFrame, tokenizer, domain: str, llm: dict) -> dict[str, list]:
    """Token ids of the candidate and open prompts and of every candidate's answer, and the
    candidate titles as the prompt shows them (clipped)."""
    from workflow.llm import prompts

    titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
    budget = dict(max_title_tokens=llm["max_title_tokens"], max_prompt_tokens=llm["max_prompt_tokens"])
    needed = {i for seq in samples["candidates"] for i in seq} | {i for seq in samples["history"] for i in seq}
    unknown = sorted(needed - titles.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} item ids of the samples are not in the items table, e.g. {unknown[:3]}")
    clipped = {i: prompts.clip_title(tokenizer, titles[i], llm["max_title_tokens"]) for i in sorted(needed)}
    answer = {}
    out = {"candidate_prompt": [], "open_prompt": [], "answers": [], "shown_titles": []}
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
    return out


def evaluate(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, *, protocols: Sequence[str],
             domain: str, llm: dict, evaluation: dict, autocast: Callable = contextlib.nullcontext,
             title_embeddings: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """(predictions frame, protocol -> metric -> per-sample values), rows in the order of `samples`.
    `title_embeddings` [n_items, H] in the row order of `items` (grounded protocol only)."""
    n = len(samples)
    candidates = [list(map(str, c)) for c in samples["candidates"]]
    target_col = metrics.target_columns(candidates, samples["target"].astype(str).tolist(),
                                        samples["sample_id"].astype(str).tolist())
    inputs = prompt_inputs(samples, items, tokenizer, domain, llm)
    batch, new_tokens = evaluation["batch_size"], evaluation["max_new_tokens"]
    pred = {"sample_id": samples["sample_id"].astype(str).to_numpy(), "split": samples["split"].astype(str).to_numpy(),
            "user_id": samples["user_id"].astype(str).to_numpy(), "target": samples["target"].astype(str).to_numpy(),
            "candidates": candidates}
    values: dict[str, dict[str, np.ndarray]] = {}

    score, generate = "likelihood" in protocols, "generation" in protocols
    if score or generate:
        # one encoding of the candidate prompt serves both protocols (workflow.llm.scoring)
        start = time.perf_counter()
        logprob, tokens, answers = prompt_passes(
            model, tokenizer, inputs["candidate_prompt"], inputs["answers"] if score else None,
            max_new_tokens=new_tokens if generate else 0, batch_size=batch, autocast=autocast)
        log.info("%s: %d samples in %.1f s", " + ".join(p for p in ("likelihood", "generation") if p in protocols),
                 n, time.perf_counter() - start)

    if score:
        normalised = logprob / tokens
        values["likelihood"] = metrics.candidate_metrics(logprob, target_col)
        values["likelihood_norm"] = metrics.candidate_metrics(normalised, target_col)
        pred |= {"candidate_logprob": list(logprob), "candidate_tokens": list(tokens.astype(np.int32)),
                 "target_rank": metrics.target_ranks(logprob, target_col),
                 "target_rank_norm": metrics.target_ranks(normalised, target_col)}

    if generate:
        found = [match_answer(a, t) for a, t in zip(answers, inputs["shown_titles"])]
        valid = np.array([f is not None for f in found], dtype=np.float64)
        hit = np.array([f is not None and f == t for f, t in zip(found, target_col)], dtype=np.float64)
        values["generation"] = {"valid": valid, "hit": hit}
        pred |= {"generated": answers, "matched_item": [None if f is None else c[f] for f, c in zip(found, candidates)]}
        log.info("generation: valid %.3f, hit %.3f", valid.mean(), hit.mean())

    if "grounded" in protocols:
        if title_embeddings is None:
            raise ValueError("the grounded protocol needs the title embeddings (--title-embeddings)")
        start = time.perf_counter()
        answers = greedy_answers(model, tokenizer, inputs["open_prompt"], new_tokens, batch, autocast)
        with base_model_only(model):
            queries = grounding.embed_texts(model, tokenizer, answers, batch_size=max(batch, 32), autocast=autocast)
        position = {item: i for i, item in enumerate(items["item_id"].astype(str))}
        target_index = np.array([position[t] for t in pred["target"]])
        history_index = [[position[i] for i in h] for h in samples["history"]]
        ranks, tops = grounded_ranking(queries, grounding.item_index(title_embeddings), target_index, history_index)
        item_ids = items["item_id"].astype(str).to_numpy()
        values["grounded"] = metrics.full_ranking_metrics(ranks)
        pred |= {"open_generated": answers, "grounded_top": [list(item_ids[t]) for t in tops],
                 "grounded_target_rank": ranks}
        log.info("grounded: %d samples in %.1f s, hr@20 %.3f", n, time.perf_counter() - start,
                 values["grounded"]["hr@20"].mean())

    frame = pd.DataFrame({name: pred.get(name, [None] * n) for name in PREDICTIONS_SCHEMA.names})
    return frame, values


def metrics_table(samples: pd.DataFrame, values: dict[str, dict[str, np.ndarray]], *, dataset: str, method: str,
                  selection: str) -> pd.DataFrame:
    frames = [metrics.ranking_metrics_frame(samples, per_metric, dataset=dataset, method=method, selection=selection,
                                            protocol=protocol) for protocol, per_metric in values.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=metrics.FRAME_COLUMNS)


def settings(spec: dict[str, Any]) -> tuple[dict, dict, str]:
    """(llm, evaluation, domain) from --spec, validated and completed by config/schema.yaml."""
    from workflow.config import stage_settings

    s = stage_settings(spec, {"llm": "llm", "evaluation": "evaluation"})
    return s["llm"], s["evaluation"], s["domain"]


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
    p.add_argument("--spec", type=cli.json_arg, required=True,
                   help='JSON {"llm": {...}, "evaluation": {...}, "domain": "movie"} (config blocks)')
    cli.add_run_arguments(p)
    p.add_argument("--predictions", required=True)
    p.add_argument("--metrics", required=True)

    def run(args):
        from workflow.llm.model import autocast, resolve_device

        llm, evaluation, domain = settings(args.spec)
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
        model, tokenizer = load_for_evaluation(args.model_dir, args.adapter, llm["device"], llm["dtype"],
                                                  llm["attention"])
        device = resolve_device(llm["device"])
        log.info("%s/%s/%s: %d samples (%s), protocols %s", args.dataset, args.method, args.selection,
                 len(samples), ", ".join(evaluation["splits"]), ", ".join(evaluation["protocols"]))
        predictions, values = evaluate(model, tokenizer, samples, items, protocols=evaluation["protocols"],
                                       domain=domain, llm=llm, evaluation=evaluation,
                                       autocast=lambda: autocast(device, llm["dtype"]), title_embeddings=embeddings)
        table = metrics_table(samples, values, dataset=args.dataset, method=args.method, selection=args.selection)
        provenance = dict(config={"llm": llm, "evaluation": evaluation, "domain": domain}, seed=args.seed,
                          model_dir=str(args.model_dir), adapter=str(args.adapter) if args.adapter else None)
        write_parquet(predictions, args.predictions, schema=PREDICTIONS_SCHEMA, **provenance)
        write_parquet(table, args.metrics, schema=METRICS_SCHEMA, **provenance)
        means = table.groupby(["protocol", "metric"], sort=False)["value"].mean()
        for (protocol, metric), value in means.items():
            log.info("%s %s: %.4f", protocol, metric, value)

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
