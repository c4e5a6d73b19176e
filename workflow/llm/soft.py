"""SOFT, self-optimized fine-tuning (DESIGN section 5), in two stages.

1. Self-distillation (`distill`, once per sft backbone): the sft model answers the prompts it was
   trained on (the backbone's selection, -n budget and prompt kind) by beam search (`soft.num_beams`;
   the top beam as raw text, not grounded to an item), with its adapter merged and every weight in
   the compute dtype (`generation_model`). Prompts are batched by length and each batch is encoded
   once: its prompt cache, repeated per beam, is handed to `generate`, which then feeds only the
   last prompt token (transformers repeats the ids and the mask per beam itself, not a cache: hence
   the repeat). Output: a Parquet of (sample_id, prompt, target, answer, kind) beside the
   backbone's adapter, read by every SOFT run of that backbone, and a small stats table (`kind`:
   the answer equals the true title, names it among other text, names another item, or no item;
   `answer_kinds`).

2. Training (`train`, per SOFT run): a fresh LoRA on the base model (not on the backbone) trains on
   (1 - lambda) CE(x, y) + lambda CE(x, y_hat), answer tokens only (`losses.soft_mixed_ce`), both
   answers of a sample scored on one encoding of its prompt (the packed scorer with C = 2).
   The curriculum: before every epoch, lambda = min(exp(alpha (d_e / d_0 - 1)), 1), d_e measured on
   the current model after e epochs and d_0 on the untuned base model (adapter off), so the first
   epoch trains on lambda = 1 (self-distilled answers only). d = mean L2 distance between the base
   model's last-layer last-token embedding (grounding.embed_texts, adapter off) of the model's answer
   and that of the true title, over a fixed seeded probe set of `probe_size` training prompts
   (`probe_set`), answered with the same beam settings.
   The train log holds per step `d_0`, `d_e` (the distance this epoch's lambda was set from: measured
   before the epoch, i.e. after the previous one) and `lambda_e`. The measured distances are kept
   beside the trainer's checkpoint (curriculum.json, keyed by the run's fingerprint), so a killed run
   resumes with the same lambda history and measures nothing twice.
   Early stopping (`soft.early_stopping`, the authors' HR@10 on the validation split): after every
   epoch the grounded protocol of the evaluation runs on the validation split (`grounded_validation`,
   train.Hooks.validate); train.train stops after `patience` epochs without improvement and keeps the
   best (or the last) epoch's adapter (train.EarlyStopping).

    python -m workflow.llm.soft distill --model-dir results/models/base --adapter .../sft-open-n256/random/adapter \
        --samples .../samples.parquet --items .../items.parquet --selection .../selection/random.parquet \
        --spec '{"llm": {...}, "soft": {"num_beams": 4}, "evaluation": {"batch_size": 8}, "domain": "movie",
                 "prompt": "open", "budget": 256}' --seed 42 --threads 1 \
        --out .../sft-open-n256/random/self_distilled.parquet --stats .../self_distilled_stats.tsv
    python -m workflow.llm.soft train --model-dir results/models/base --distilled .../self_distilled.parquet \
        --samples ... --items ... --selection ... --spec '{"llm": ..., "soft": ..., "evaluation": ...}' \
        --seed 42 --threads 1 --out .../soft-open-n256/random/adapter \
        [--title-embeddings results/ml-100k/llm/title_embeddings.parquet]  # with soft.early_stopping

The adapter folder is that of SFT (workflow/llm/sft.py): the evaluation reads it the same way.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from workflow import cli
from workflow.io import atomic_path, write_json, write_parquet
from workflow.llm import stage, train

log = logging.getLogger(__name__)

DISTILLED_SCHEMA = pa.schema([("sample_id", pa.string()), ("prompt", pa.string()), ("target", pa.string()),
                              ("answer", pa.string()), ("kind", pa.string())])
ANSWER_KINDS = ("target", "names_target", "other_item", "no_item")
PROBE_STREAM = 0x50F7  # the probe draw's own stream of the run seed
MEMO_FILE = "curriculum.json"


def settings(spec: dict[str, Any]) -> dict[str, Any]:
    """{llm, soft, evaluation, domain, prompt, budget} from --spec, validated and completed by
    config/schema.yaml (`evaluation.batch_size`: prompts per generation batch)."""
    from workflow.config import stage_settings

    return stage_settings(spec, {"llm": "llm", "soft": "soft", "evaluation": "evaluation"})


# ----------------------------------------------------------------------------- beam search

def beam_config(tokenizer, num_beams: int, max_new_tokens: int):
    """The evaluation's decoding settings (stop at the end of the answer) with `num_beams` beams;
    the top beam is returned."""
    from workflow.llm.inference import generation_config

    config = generation_config(tokenizer, max_new_tokens)
    config.num_beams = int(num_beams)
    return config


@torch.no_grad()
def beam_answers(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, num_beams: int, max_new_tokens: int,
                 batch_size: int, autocast: Callable = contextlib.nullcontext, prompt_cache: bool = True) -> list[str]:
    """The top beam's text per prompt, in prompt order; prompts batched by length (left padding).
    With `prompt_cache`, each batch's prompts are encoded once, not once per beam."""
    from workflow.llm.inference import batches, by_length, encode_prompts, left_pad, pad_id

    config = beam_config(tokenizer, num_beams, max_new_tokens)
    device = next(model.parameters()).device
    answers = [""] * len(prompt_ids)
    for chosen in batches(by_length(prompt_ids), batch_size):
        batch = [prompt_ids[i] for i in chosen]
        with autocast():
            if prompt_cache:
                cache = encode_prompts(model, batch, pad_id(tokenizer))
                cache.past.batch_repeat_interleave(int(num_beams))  # generate repeats ids and mask, not a cache
                ids = cache.input_ids
                out = model.generate(input_ids=ids, attention_mask=cache.attention_mask, past_key_values=cache.past,
                                     generation_config=config)
            else:
                ids, mask, _ = (t.to(device) for t in left_pad(batch, pad_id(tokenizer)))
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for row, i in enumerate(chosen):
            answers[i] = tokenizer.decode(out[row, ids.shape[1]:], skip_special_tokens=True).strip()
    return answers


def has_quantized_layers(model) -> bool:
    from workflow.llm.model import is_quantized

    return any(is_quantized(m) for m in model.modules() if isinstance(m, torch.nn.Linear))


def generation_model(model, dtype: torch.dtype, implementation: str | None = None, *, base: bool = False,
                     copy: bool = True):
    """The model for no-grad beam search: a PEFT adapter folded into the weights (left out when
    `base`), every weight in `dtype` (the compute dtype), attention `implementation`; a copy unless
    `copy=False`. Why: beam search copies the whole KV cache twice per step (appending and
    reordering the beams); with fp32 norms and embeddings under bf16 autocast, part of that cache is
    fp32 and is cast at every step, and the unmerged adapter adds matmuls and casts per layer. A
    merged bf16 model answers 2x faster (bench/bench_soft.py); its answers are those of the mixed-
    precision model up to bf16 rounding.

    Only where that is safe (`can_fold`): never into k-bit weights (a merge would dequantise and
    round the LoRA delta into 4 bits) and never a copy of a model on a GPU (a second 7B copy).
    Otherwise use `answering_model`, which runs the model as it is."""
    import copy as copying

    from peft import PeftModel

    if not can_fold(model, copy):
        raise ValueError("generation_model: the model is quantized or on a GPU; use answering_model")
    out = copying.deepcopy(model) if copy else model
    if isinstance(out, PeftModel):
        out = out.unload() if base else out.merge_and_unload()
    out.requires_grad_(False)
    if implementation is not None and out.config._attn_implementation != implementation:
        out.set_attn_implementation(implementation)
    return out.to(dtype).eval()


def can_fold(model, copy: bool) -> bool:
    """Whether `generation_model` may merge (and, with `copy`, duplicate) the model: no k-bit layer,
    and a copy only of a model in host memory."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return not has_quantized_layers(model) and (on_cpu or not copy)


@contextlib.contextmanager
def answering_model(model, dtype: torch.dtype, implementation: str | None = None, *, base: bool = False):
    """A model to beam-search with, in eval mode: a folded copy (`generation_model`) where that is
    safe, else the model itself (its adapter disabled when `base`), which on a GPU already holds its
    weights in the compute dtype."""
    from peft import PeftModel

    if can_fold(model, copy=True):
        folded = generation_model(model, dtype, implementation, base=base)
        try:
            yield folded
        finally:
            del folded
        return
    model.eval()
    off = model.disable_adapter() if base and isinstance(model, PeftModel) else contextlib.nullcontext()
    with off, torch.no_grad():
        yield model


# ----------------------------------------------------------------------------- self-distillation

def clipped_titles(items: pd.DataFrame, tokenizer, max_title_tokens: int) -> dict[str, str]:
    """item id -> title as the answers show it (clipped like the sft answers)."""
    from workflow.llm.prompts import clip_title

    return {str(i): clip_title(tokenizer, str(t), max_title_tokens) for i, t in zip(items["item_id"], items["title"])}


def answer_kinds(answers: Sequence[str], targets: Sequence[str], titles: dict[str, str]) -> list[str]:
    """Per answer: `target` when it equals the true title (normalised: case-folded, whitespace
    collapsed), `names_target` when the true title occurs in it among other text, `other_item` when
    another item's title occurs in it, `no_item` otherwise (occurrence: evaluate.matched_candidates,
    a title inside a longer found title does not count)."""
    from workflow.llm.protocols import matched_candidates, normalize

    ids = list(titles)
    names = [normalize(titles[i]) for i in ids]
    kinds = []
    for answer, target in zip(answers, targets):
        text = normalize(answer)
        if text == normalize(titles[target]):
            kinds.append("target")
            continue
        present = [j for j, name in enumerate(names) if name and name in text]  # cheap filter first
        found = {ids[present[k]] for k in matched_candidates(answer, [names[j] for j in present])}
        kinds.append("names_target" if target in found else "other_item" if found else "no_item")
    return kinds


def self_distilled_table(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, *, domain: str,
                         llm: dict[str, Any], prompt: str, num_beams: int, max_new_tokens: int, batch_size: int,
                         autocast: Callable = contextlib.nullcontext) -> pd.DataFrame:
    """One row per training sample: its top-beam answer to the training prompt and the answer's kind."""
    from workflow.llm.data import sft_examples

    examples = sft_examples(samples, items, tokenizer, domain, llm, prompt)
    answers = beam_answers(model, tokenizer, [e["prompt"] for e in examples], num_beams=num_beams,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, autocast=autocast)
    targets = samples["target"].astype(str).tolist()
    kinds = answer_kinds(answers, targets, clipped_titles(items, tokenizer, llm["max_title_tokens"]))
    return pd.DataFrame({"sample_id": samples["sample_id"].astype(str).tolist(), "prompt": prompt,
                         "target": targets, "answer": answers, "kind": kinds})


def distillation_stats(table: pd.DataFrame) -> pd.DataFrame:
    """Answers per kind (ANSWER_KINDS) and their share; a last row `distinct` counts the different
    (normalised) answers, a sign of how far the backbone's answers collapse onto a few titles."""
    from workflow.llm.protocols import normalize

    counts = table["kind"].value_counts().reindex(list(ANSWER_KINDS), fill_value=0)
    distinct = table["answer"].map(normalize).nunique()
    n = max(len(table), 1)
    return pd.DataFrame({"kind": [*ANSWER_KINDS, "distinct"], "answers": [*counts.tolist(), distinct],
                         "share": [*(counts / n).round(4).tolist(), round(distinct / n, 4)]})


def run_distill(model_dir: str | Path, adapter: str | Path, samples_path: str | Path, items_path: str | Path,
                selection_path: str | Path, spec: dict[str, Any], seed: int, out: str | Path,
                stats_out: str | Path) -> pd.DataFrame:
    """The backbone's self-distilled answers to its training prompts -> `out` (and the stats table)."""
    import time

    from peft import PeftModel

    from workflow.llm.data import read_training_samples
    from workflow.llm.model import autocast, load_model, model_device, resolve_dtype

    s = settings(spec)
    llm, cfg = s["llm"], s["soft"]
    samples = read_training_samples(samples_path, selection_path)
    items = pd.read_parquet(items_path, columns=["item_id", "title"])
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    model, tokenizer = load_model(model_dir, device=llm["device"], dtype=llm["dtype"], attention=llm["attention"],
                                  training=False, quantization=llm["quantization"])
    device = model_device(model)
    model = PeftModel.from_pretrained(model, str(adapter))
    if can_fold(model, copy=False):  # merged in place: no copy (k-bit weights stay unmerged)
        model = generation_model(model, resolve_dtype(llm["dtype"], device), copy=False)
    model.requires_grad_(False)
    start = time.perf_counter()
    table = self_distilled_table(model, tokenizer, samples, items, domain=s["domain"], llm=llm, prompt=s["prompt"],
                                 num_beams=cfg["num_beams"], max_new_tokens=cfg["max_new_tokens"],
                                 batch_size=s["evaluation"]["batch_size"],
                                 autocast=lambda: autocast(device, llm["dtype"]))
    seconds = time.perf_counter() - start
    stats = distillation_stats(table)
    config = {"llm": llm, "soft": {k: cfg[k] for k in ("num_beams", "max_new_tokens")}, "domain": s["domain"],
              "prompt": s["prompt"], "budget": s["budget"], "adapter": str(adapter), "selection": str(selection_path)}
    write_parquet(table, out, config=config, seed=seed, schema=DISTILLED_SCHEMA)
    with atomic_path(stats_out, suffix=".tsv") as tmp:
        stats.to_csv(tmp, sep="\t", index=False)
    log.info("%d self-distilled answers (%d beams) in %.1f s, %.2f answers/s: %s; most frequent: %r", len(table),
             cfg["num_beams"], seconds, len(table) / seconds,
             ", ".join(f"{k} {a} ({sh:.1%})" for k, a, sh in stats.itertuples(index=False)),
             table["answer"].value_counts().index[0])
    return table


# ----------------------------------------------------------------------------- the curriculum

def curriculum_lambda(d_e: float, d_0: float, alpha: float) -> float:
    """lambda = min(exp(alpha (d_e / d_0 - 1)), 1), the self-distilled answers' weight: 1 while the
    model's answers are no closer to the true titles than the untuned model's (d_e >= d_0), falling
    as they get closer, the faster the larger alpha."""
    if not d_0 > 0:
        raise ValueError(f"SOFT: the untuned model's probe distance d_0 must be positive, got {d_0}")
    return math.exp(min(alpha * (d_e / d_0 - 1.0), 0.0))  # the clip first: no overflow at large alpha


def probe_set(sample_ids: Sequence[str], probe_size: int, seed: int) -> list[str]:
    """`probe_size` of the training sample ids (all when fewer), sorted, drawn by a generator of the
    run seed alone from the sorted ids: the same set in every epoch and every SOFT run of a
    selection and budget (any alpha), whatever the row order."""
    ids = np.sort(np.asarray(list(sample_ids), dtype=str))
    if probe_size >= len(ids):
        return ids.tolist()
    return sorted(np.random.default_rng([seed, PROBE_STREAM]).choice(ids, size=probe_size, replace=False).tolist())


def probe_distance(model, tokenizer, prompt_ids: Sequence[Sequence[int]], title_embeddings: np.ndarray, *,
                   base: bool, num_beams: int, max_new_tokens: int, batch_size: int,
                   autocast: Callable = contextlib.nullcontext, dtype: torch.dtype = torch.float32,
                   implementation: str | None = None) -> float:
    """d: mean L2 distance between the base model's embeddings of the answers (of the base model
    when `base`, else of the current model) and the true titles' embeddings. The answers come from
    a `generation_model` copy (merged, `dtype`, attention `implementation`: the training model runs
    eager attention on a bf16 CPU, beam search is faster with sdpa); the embeddings from the
    training model with its adapter off, as the evaluation embeds. Draws no random numbers the
    training would see (the RNG state is restored), so measuring changes no result."""
    from workflow.llm.inference import base_model_only
    from workflow.llm.grounding import embed_texts

    with torch.random.fork_rng(devices=[]):
        with answering_model(model, dtype, implementation, base=base) as answering:
            answers = beam_answers(answering, tokenizer, prompt_ids, num_beams=num_beams,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, autocast=autocast)
        model.eval()  # no LoRA dropout; the training step switches back
        with base_model_only(model):
            embedded = embed_texts(model, tokenizer, answers, batch_size=max(batch_size, 32), autocast=autocast)
    return float(np.linalg.norm(embedded - title_embeddings, axis=1).mean())


def read_memo(path: Path | None, run_id: str) -> dict[int, float]:
    """The distances a run already measured (epoch -> d); none for a missing or another run's file."""
    if path is None or not path.is_file():
        return {}
    memo = json.loads(path.read_text())
    if memo.get("fingerprint") != run_id:
        return {}
    return {int(epoch): float(d) for epoch, d in memo["distances"].items()}


def curriculum_hooks(measure: Callable[[int], float], alpha: float, steps_per_epoch: int, memo: Path | None = None,
                     run_id: str = "") -> tuple[Callable, Callable, Callable[[], float]]:
    """(epoch_start, step_start, current lambda) for train.train.

    `measure(e)` is d after e epochs (e = 0: the untuned model). epoch_start(e) measures it once and
    returns the epoch's logged values {d_0, d_e, lambda_e}; step_start sets the lambda the loss reads
    from the step's epoch, also when a killed run resumes within an epoch (train.train then skips
    epoch_start). Measured distances go to `memo` at once, so a resumed run reuses them."""
    distances = read_memo(memo, run_id)
    current = {"lambda": 1.0}

    def distance(epoch: int) -> float:
        if epoch not in distances:
            distances[epoch] = float(measure(epoch))
            if memo is not None:
                write_json({"fingerprint": run_id, "distances": {str(e): d for e, d in sorted(distances.items())}},
                           memo)
        return distances[epoch]

    def values(epoch: int) -> dict[str, float]:
        d_0, d_e = distance(0), distance(epoch)
        return {"d_0": d_0, "d_e": d_e, "lambda_e": curriculum_lambda(d_e, d_0, alpha)}

    def step_start(global_step: int, total_steps: int) -> None:
        epoch = global_step // steps_per_epoch
        if epoch not in distances:  # epoch_start measured it before the epoch's first step
            raise ValueError(f"SOFT: no probe distance of epoch {epoch + 1} in {memo} (a checkpoint without its "
                             "curriculum; remove the checkpoint folder to start afresh)")
        current["lambda"] = values(epoch)["lambda_e"]

    return values, step_start, lambda: current["lambda"]


# ----------------------------------------------------------------------------- training

def read_distilled(path: str | Path, samples: pd.DataFrame, prompt: str) -> dict[str, str]:
    """sample_id -> self-distilled answer, for every training sample, made with the run's prompt."""
    table = pd.read_parquet(path)
    missing = [c for c in ("sample_id", "prompt", "answer") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    other = sorted(set(table["prompt"]) - {prompt})
    if other:
        raise ValueError(f"{path}: answers to the {other[0]} prompt, the run trains on the {prompt} prompt")
    answers = dict(zip(table["sample_id"].astype(str), table["answer"].fillna("").astype(str)))
    absent = [i for i in samples["sample_id"].astype(str) if i not in answers]
    if absent:
        raise ValueError(f"{path}: no self-distilled answer for {len(absent)} training samples, e.g. {absent[:3]} "
                         "(made for another selection or budget?)")
    return answers


def soft_examples(samples: pd.DataFrame, items: pd.DataFrame, distilled: dict[str, str], tokenizer, domain: str,
                  llm: dict[str, Any], prompt: str) -> list[dict[str, Any]]:
    """Per sample {"prompt": ids, "answers": [true answer ids, self-distilled answer ids]}; both
    answers tokenised as SFT's (clipped, end-of-turn); an empty answer is the end-of-turn alone."""
    from workflow.llm import prompts
    from workflow.llm.data import sft_examples

    end = prompts.end_of_answer_id(tokenizer)
    out = []
    for example, sample_id in zip(sft_examples(samples, items, tokenizer, domain, llm, prompt), samples["sample_id"]):
        text = distilled[str(sample_id)].strip()
        hat = prompts.clipped_answer_ids(tokenizer, text, llm["max_title_tokens"]) if text else [end]
        out.append({"prompt": example["prompt"], "answers": [example["answer"], hat]})
    return out


def collate(examples: Sequence[dict[str, Any]]) -> tuple[list[list[int]], list[list[list[int]]]]:
    return [e["prompt"] for e in examples], [e["answers"] for e in examples]


def mixed_loss_fn(current_lambda: Callable[[], float]):
    """The trainer's loss: `losses.soft_mixed_ce` at the current lambda, both answers of a sample on
    one prompt encoding; each micro-batch weighs by its samples. `tokens`: what the pass runs on."""
    from workflow.llm.losses import soft_mixed_ce
    from workflow.llm.scoring import candidate_logprobs

    def loss_fn(model, batch):
        prompt_ids, answer_ids = batch
        logprob, n_tokens = candidate_logprobs(model, prompt_ids, answer_ids)
        loss, diagnostics = soft_mixed_ce(logprob[:, 0], n_tokens[:, 0], logprob[:, 1], n_tokens[:, 1],
                                          current_lambda())
        processed = sum(len(p) + len(a) + len(b) - 2 for p, (a, b) in zip(prompt_ids, answer_ids))
        return loss, len(prompt_ids), {**diagnostics, "tokens": processed}

    return loss_fn


def grounded_validation(loaded: stage.Loaded, stopping: dict[str, Any], *, samples_path: str | Path,
                        items_path: str | Path, title_embeddings_path: str | Path, llm: dict[str, Any], domain: str,
                        prompt: str, evaluation: dict[str, Any], seed: int) -> Callable[[int], dict[str, float]]:
    """Early stopping's validate hook (train.Hooks.validate): the grounded protocol, as the evaluation
    stage runs it (greedy answers to the open prompt, embedded by the base model, every item ranked),
    on `stopping["samples"]` validation samples (drawn as the evaluation draws its generation subset;
    all when null), with the model as it trains; the mean of every grounded metric (hr@K, ndcg@K).
    Draws no random numbers the training would see."""
    from workflow.llm import evaluate, grounding
    from workflow.llm.protocols import PROTOCOLS

    if prompt not in PROTOCOLS["grounded"].prompts:
        raise ValueError(f"soft.early_stopping validates by grounded ranking, which needs the open prompt; "
                         f"the run has the {prompt} prompt")
    if stopping["metric"] not in PROTOCOLS["grounded"].metrics:
        raise ValueError(f"soft.early_stopping.metric {stopping['metric']!r} is not a grounded metric "
                         f"({', '.join(PROTOCOLS['grounded'].metrics)})")
    samples = evaluate.read_samples(samples_path, ["valid"])
    samples = samples[evaluate.generation_subset(samples["sample_id"].astype(str).to_numpy(), stopping["samples"],
                                                 seed)].reset_index(drop=True)
    items = evaluate.ranked_items(samples_path, items_path)
    embeddings = grounding.read_title_embeddings(title_embeddings_path, items["item_id"].tolist())
    evaluation = {"batch_size": evaluation["batch_size"], "max_new_tokens": evaluation["max_new_tokens"],
                  "generation_samples": None}
    log.info("early stopping on validation %s: %d samples, patience %d", stopping["metric"], len(samples),
             stopping["patience"])

    def validate(epochs_done: int) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):
            loaded.model.eval()  # the training step switches back
            _, values = evaluate.evaluate_sharded(loaded.model, loaded.tokenizer, samples, items,
                                                  protocols=["grounded"], domain=domain, llm=llm, evaluation=evaluation,
                                                  autocast=loaded.autocast, title_embeddings=embeddings,
                                                  prompt=prompt, seed=seed)
        return {metric: float(np.nanmean(v)) for metric, v in values["grounded"].items()}

    return validate


def soft_method(cfg: dict[str, Any], llm: dict[str, Any], domain: str, prompt: str, evaluation: dict[str, Any],
                distilled_path: str | Path, seed: int, validation: dict[str, str | Path] | None = None
                ) -> stage.Method:
    """SOFT as a training stage: a fresh LoRA; the plan mixes the true and the self-distilled
    answers by lambda_e, which the epoch hook measures on a fixed probe set. With
    `cfg["early_stopping"]`, `validation` names the samples, items and title embeddings the
    validate hook reads (`grounded_validation`)."""
    batch_size = evaluation["batch_size"]
    from workflow.llm.inference import base_model_only
    from workflow.llm.grounding import embed_texts
    from workflow.llm.model import resolve_attention

    def plan(loaded: stage.Loaded) -> stage.Plan:
        model, tokenizer, samples, items = loaded.model, loaded.tokenizer, loaded.samples, loaded.items
        distilled = read_distilled(distilled_path, samples, prompt)
        examples = soft_examples(samples, items, distilled, tokenizer, domain, llm, prompt)
        probes = probe_set(samples["sample_id"].astype(str), cfg["probe_size"], seed)
        rows = np.flatnonzero(samples["sample_id"].astype(str).isin(probes))
        titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
        with base_model_only(model):
            title_embeddings = embed_texts(model, tokenizer, [titles[str(samples["target"].iloc[r])] for r in rows],
                                           autocast=loaded.autocast)
        beam = dict(num_beams=cfg["num_beams"], max_new_tokens=cfg["max_new_tokens"], batch_size=batch_size,
                    autocast=loaded.autocast, dtype=loaded.dtype,
                    implementation=resolve_attention(llm["attention"], loaded.device, llm["dtype"], training=False))

        def measure(epoch: int) -> float:
            d = probe_distance(model, tokenizer, [examples[r]["prompt"] for r in rows], title_embeddings,
                               base=epoch == 0, **beam)
            log.info("probe distance after %d epochs: %.4f (%d probes)", epoch, d, len(rows))
            return d

        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        run_id = train.fingerprint(examples, cfg, seed, trainable, loaded.fingerprint)  # the trainer's own key
        per_epoch = train.steps_per_epoch(len(examples), cfg["batch_size"], cfg["grad_accum"])
        epoch_start, step_start, current = curriculum_hooks(measure, cfg["alpha"], per_epoch,
                                                             loaded.checkpoint / MEMO_FILE, run_id)
        log.info("SOFT on %d samples, %s prompt, alpha %g, %d probes, %d epochs", len(examples), prompt,
                 cfg["alpha"], len(rows), cfg["epochs"])

        def summary(train_log: pd.DataFrame) -> dict[str, Any]:
            history = train_log.groupby("epoch")[["d_e", "lambda_e"]].first()
            log.info("per epoch d_e %s, lambda_e %s", ", ".join(f"{d:.4f}" for d in history["d_e"]),
                     ", ".join(f"{v:.4f}" for v in history["lambda_e"]))
            return {"probe": probes, "d_0": float(train_log["d_0"].iloc[0]), "d_e": history["d_e"].tolist(),
                    "lambda_e": history["lambda_e"].tolist()}

        validate = None
        if cfg.get("early_stopping"):
            if validation is None:
                raise ValueError("soft.early_stopping is set: pass --title-embeddings (the grounded validation)")
            validate = grounded_validation(loaded, cfg["early_stopping"], samples_path=validation["samples"],
                                           items_path=validation["items"],
                                           title_embeddings_path=validation["title_embeddings"], llm=llm,
                                           domain=domain, prompt=prompt, evaluation=evaluation, seed=seed)
        return stage.Plan(examples, collate, mixed_loss_fn(current),
                          train.Hooks(step_start=step_start, epoch_start=epoch_start, validate=validate),
                          config={"distilled": str(distilled_path)}, summary=summary)

    return stage.Method("soft", cfg, lambda model, tokenizer: train.add_lora(model, cfg, seed), plan)


def run_soft(model_dir: str | Path, distilled_path: str | Path, samples_path: str | Path, items_path: str | Path,
             selection_path: str | Path, spec: dict[str, Any], seed: int, out: str | Path,
             title_embeddings: str | Path | None = None) -> Path:
    """Train a fresh LoRA adapter by SOFT and save it to `out` (see the module docstring);
    `title_embeddings` for early stopping's grounded validation."""
    s = settings(spec)
    llm, cfg, domain = s["llm"], s["soft"], s["domain"]
    validation = None if title_embeddings is None else {"samples": samples_path, "items": items_path,
                                                        "title_embeddings": title_embeddings}
    method = soft_method(cfg, llm, domain, s["prompt"], s["evaluation"], distilled_path, seed, validation)
    stage.run_stage(method, model_dir=model_dir, samples_path=samples_path, items_path=items_path,
                    selection_path=selection_path, llm=llm, seed=seed, out=out,
                    config={"soft": cfg, "domain": domain, "prompt": s["prompt"], "budget": s["budget"]})
    return Path(out)


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="SOFT: an sft backbone's self-distilled answers, and the "
                                            "self-adaptive curriculum training.")
    sub = p.add_subparsers(dest="stage", required=True)
    common = argparse.ArgumentParser(add_help=False)  # the arguments both stages take
    common.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all)")
    common.add_argument("--model-dir", required=True, help="the base model folder (rule base_model)")
    for name in ("samples", "items", "selection"):
        common.add_argument(f"--{name}", required=True)
    common.add_argument("--spec", type=cli.json_arg, required=True,
                        help='JSON {"llm": {...}, "soft": {...}, "evaluation": {"batch_size": 8}, "domain": "movie", '
                             '"prompt": "open", "budget": null}')
    common.add_argument("--seed", type=int, required=True)
    common.add_argument("--out", required=True)
    d = sub.add_parser("distill", parents=[common], help="the sft backbone answers its training prompts")
    d.add_argument("--adapter", required=True, help="the sft backbone's adapter")
    d.add_argument("--stats", required=True, help="TSV of the answers' kinds")
    t = sub.add_parser("train", parents=[common], help="a fresh LoRA on the mixed objective")
    t.add_argument("--distilled", required=True, help="the backbone's self_distilled.parquet")
    t.add_argument("--title-embeddings", default=None, help="the title embeddings (soft.early_stopping's validation)")

    def run(a):
        if a.stage == "distill":
            run_distill(a.model_dir, a.adapter, a.samples, a.items, a.selection, a.spec, a.seed, a.out, a.stats)
        else:
            run_soft(a.model_dir, a.distilled, a.samples, a.items, a.selection, a.spec, a.seed, a.out,
                     a.title_embeddings)

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
