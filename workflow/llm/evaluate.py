"""Evaluate an LLM recommender (the base model, or the base model + a PEFT adapter) under the
protocols of DESIGN section 6 on the stored samples and candidate sets, with the run's prompt
(`candidate` or `open`, workflow/runs.py). The protocols, what each measures and which prompt
supports it, are workflow/llm/protocols.py (one function per protocol, one table); the inference
engine (batches by length, the prompt KV cache, greedy and constrained decoding) is
workflow/llm/inference.py.

`evaluate` builds the protocols' `EvalContext` (the samples' prompt inputs, the targets' columns,
the samples to decode), runs the shared pass, then the requested protocols in the table's order.
The shared pass encodes each batch of prompts once: its KV cache serves the candidate scoring (all
samples) and the free and constrained decodings (with `evaluation.generation_samples`, a seeded
subset of the samples, `generation_subset`, the same for every run, so their paired comparisons
hold). Decoding writes up to `max_new_tokens` per sample (constrained generation up to the longest
candidate answer).

Ranks in predictions.parquet are 0-based (0 = the target comes first), as in workflow.metrics.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from workflow import cli, metrics, prepare
from workflow.io import write_parquet
from workflow.llm import grounding, llara
# The engine's and the protocols' names that tests and other modules still import from here.
from workflow.llm.inference import (PassOutputs, SampleHooks, answer_trie, base_model_only,  # noqa: F401
                                    encoded_passes, generation_config, greedy_answers, likelihood_scores,
                                    next_tokens, no_sample_hooks, prompt_passes)
# the evaluation's loading, used by callers as evaluate.load_for_evaluation
from workflow.llm.model import load_for_evaluation  # noqa: F401
from workflow.llm.protocols import (ANSWER_ERRORS, PREDICTIONS_SCHEMA, PROTOCOLS, RUNS, EvalContext,  # noqa: F401
                                    answer_category, grounded_ranking, match_answer, matched_candidates,
                                    normalize, position_bias_values, reads, resolve, reversed_candidates,
                                    reversed_order_logprobs)
from workflow.llm.prompts import prompt_inputs
from workflow.prepare import item_vocabulary
from workflow.runs import DEFAULT_PROMPT
from workflow.semantic_ids import sid_tokens

log = logging.getLogger(__name__)

METRICS_SCHEMA = pa.schema([(c, pa.float64() if c == "value" else pa.string()) for c in metrics.FRAME_COLUMNS])


def generation_subset(sample_ids: Sequence[str], n: int | None, seed: int) -> np.ndarray:
    """Boolean mask of the samples the generation protocols decode: `n` of them drawn by a seeded
    generator from the sorted ids (independent of row order and of the model), all when n is None."""
    ids = np.asarray(sample_ids, dtype=str)
    if n is None or n >= len(ids):
        return np.ones(len(ids), dtype=bool)
    chosen = np.random.default_rng([seed, 0x6E4]).choice(np.sort(ids), size=n, replace=False)
    return np.isin(ids, chosen)


def context(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, chosen: Sequence[str], *, domain: str,
            llm: dict, evaluation: dict, autocast: Callable, title_embeddings: np.ndarray | None, prompt: str,
            seed: int, item_marker: str | None, hooks_for: Callable[[pd.DataFrame, list], SampleHooks] | None,
            decode_mask: np.ndarray | None) -> EvalContext:
    """The `EvalContext` of the `chosen` protocols (`protocols.resolve`) on these samples."""
    candidates = [list(map(str, c)) for c in samples["candidates"]]
    target_col = metrics.target_columns(candidates, samples["target"].astype(str).tolist(),
                                        samples["sample_id"].astype(str).tolist())
    inputs = prompt_inputs(samples, items, tokenizer, domain, llm, item_marker)
    if not any(PROTOCOLS[p].decodes for p in chosen):
        decode = np.zeros(len(samples), dtype=bool)
    elif decode_mask is not None:
        decode = np.asarray(decode_mask, dtype=bool)
    else:
        decode = generation_subset(samples["sample_id"].astype(str).to_numpy(), evaluation.get("generation_samples"),
                                   seed)
    return EvalContext(model, tokenizer, samples, items, prompt, domain, llm, evaluation, autocast, inputs, candidates,
                       target_col, decode, title_embeddings, item_marker, hooks_for)


def shared_pass(ctx: EvalContext, chosen: Sequence[str]) -> PassOutputs:
    """One encoding of every prompt serves what the `chosen` protocols read: the forward candidate
    scores [N, C] of all samples, the free and the constrained answers of the decoded samples (None
    for the others); the decoded subset in one pass, the rest scored only."""
    score = any(PROTOCOLS[p].scores for p in chosen)
    free = [p for p in chosen if PROTOCOLS[p].decodes == "free"]
    constrained = [p for p in chosen if PROTOCOLS[p].decodes == "constrained"]
    n, inputs, prompt_ids = ctx.n, ctx.inputs, ctx.inputs[f"{ctx.prompt}_prompt"]
    all_hooks = ctx.hooks_for(ctx.samples, prompt_ids) if ctx.hooks_for is not None else no_sample_hooks
    logprob = np.zeros((n, len(ctx.candidates[0])), dtype=np.float32) if score else None
    tokens = np.zeros_like(logprob, dtype=np.int64) if score else None
    answers: list[str | None] = [None] * n
    constrained_answers: list[str | None] = [None] * n
    generates = bool(free or constrained)  # the catalogue protocol decodes by its own search, not in this pass
    for rows, decoding in ((np.flatnonzero(ctx.decode), True), (np.flatnonzero(~ctx.decode), False)):
        if len(rows) == 0 or not (score or (decoding and generates)):
            continue
        start = time.perf_counter()
        out = encoded_passes(ctx.model, ctx.tokenizer, [prompt_ids[i] for i in rows],
                             [inputs["answers"][i] for i in rows] if score else None,
                             max_new_tokens=ctx.evaluation["max_new_tokens"] if decoding and free else 0,
                             constrain_to=[inputs["answers"][i] for i in rows] if decoding and constrained else None,
                             batch_size=ctx.batch_size, autocast=ctx.autocast,
                             sample_hooks=lambda chosen, rows=rows: all_hooks(rows[chosen]))
        if score:
            logprob[rows], tokens[rows] = out.logprob, out.tokens
        for k, i in enumerate(rows):
            answers[i] = out.answers[k] if out.answers is not None else None
            constrained_answers[i] = out.constrained[k] if out.constrained is not None else None
        passes = (["likelihood"] if score else []) + (free + constrained if decoding else [])
        log.info("%s prompt, %s: %d samples in %.1f s", ctx.prompt, " + ".join(passes), len(rows),
                 time.perf_counter() - start)
    return PassOutputs(logprob, tokens, answers, constrained_answers)


def evaluate(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, *, protocols: Sequence[str],
             domain: str, llm: dict, evaluation: dict, autocast: Callable = contextlib.nullcontext,
             title_embeddings: np.ndarray | None = None, prompt: str = DEFAULT_PROMPT,
             seed: int = 0, item_marker: str | None = None,
             hooks_for: Callable[[pd.DataFrame, list], SampleHooks] | None = None,
             decode_mask: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """(predictions frame, protocol -> metric -> per-sample values), rows in the order of `samples`;
    a protocol run on a subset (generation_samples) has NaN for the other samples.
    `title_embeddings` [n_items, H] in the row order of `items` (grounded protocol only).
    A hybrid-prompt model (workflow/llm/llara.py) passes its `item_marker` and
    `hooks_for(samples, prompt_ids) -> sample_hooks` (see inference.encoded_passes). `decode_mask`: the
    samples to decode, when the caller drew the generation subset over more samples than these (a shard)."""
    chosen = resolve(protocols, prompt)
    ctx = context(model, tokenizer, samples, items, chosen, domain=domain, llm=llm, evaluation=evaluation,
                  autocast=autocast, title_embeddings=title_embeddings, prompt=prompt, seed=seed,
                  item_marker=item_marker, hooks_for=hooks_for, decode_mask=decode_mask)
    ctx.passes = shared_pass(ctx, chosen)
    pred = {"sample_id": samples["sample_id"].astype(str).to_numpy(), "split": samples["split"].astype(str).to_numpy(),
            "user_id": samples["user_id"].astype(str).to_numpy(), "target": samples["target"].astype(str).to_numpy(),
            "candidates": ctx.candidates}
    values: dict[str, dict[str, np.ndarray]] = {}
    for name in chosen:
        if name in RUNS:
            reported = RUNS[name](ctx)
            values |= reported.values
            pred |= reported.columns
    frame = pd.DataFrame({name: pred.get(name, [None] * ctx.n) for name in PREDICTIONS_SCHEMA.names})
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
    rows = np.asarray(distributed.shard(np.arange(len(samples))))
    frame, values = evaluate(model, tokenizer, samples.iloc[rows].reset_index(drop=True), items,
                             evaluation=evaluation, seed=seed, decode_mask=decode[rows], **kwargs)
    parts = distributed.gather_objects((rows, frame, values))
    back = np.argsort(np.concatenate([r for r, _, _ in parts]))  # gathered row -> sample order
    merged = pd.concat([f for _, f, _ in parts], ignore_index=True).iloc[back].reset_index(drop=True)
    merged_values = {protocol: {metric: np.concatenate([v[protocol][metric] for _, _, v in parts])[back]
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
    """The checked samples of `splits` (workflow/prepare.py `read_samples`), item ids as strings."""
    chosen = prepare.read_samples(path, splits)
    chosen["history"] = chosen["history"].map(lambda h: [str(i) for i in h])
    chosen["candidates"] = chosen["candidates"].map(lambda c: [str(i) for i in c])
    return chosen


def ranked_items(samples_path, items_path) -> pd.DataFrame:
    """item_id, title of the items grounded ranking ranks: the dataset's item universe (any
    sample's item; the items the surrogate ranks too), in the items table's order."""
    items = pd.read_parquet(items_path, columns=["item_id", "title"])
    items["item_id"] = items["item_id"].astype(str)
    universe = item_vocabulary(pd.read_parquet(samples_path, columns=["history", "target", "candidates"]),
                               items, source=items_path)
    return items[items["item_id"].isin(set(universe))].reset_index(drop=True)


def main(argv=None) -> int:
    p = cli.parser("Evaluate an LLM recommender: candidate likelihood, generation, grounded full ranking.")
    p.add_argument("--model-dir", required=True, help="the base model folder")
    p.add_argument("--adapter", default=None, help="a PEFT adapter folder (omit for the untuned base model)")
    p.add_argument("--samples", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--title-embeddings", default=None, help="needed by the protocols that read it (grounded)")
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
        items = ranked_items(args.samples, args.items)
        embeddings = None
        if "title_embeddings" in reads(evaluation["protocols"]):
            if not args.title_embeddings:
                raise ValueError(f"evaluation.protocols {evaluation['protocols']} read the title embeddings: "
                                 "pass --title-embeddings")
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
                                                   llm["attention"], llm["quantization"], item_tokens=sid_tokens(items))
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
