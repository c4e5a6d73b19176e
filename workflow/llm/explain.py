"""Token-level explanations of a trained run's top recommendation (the token analysis of DMPO's paper).

For the first `explanations.n_samples` evaluated samples (the `evaluation.splits` rows of
samples.parquet, in file order, so every run explains the same samples), the run's top candidate
is the candidate with the highest likelihood score in its predictions.parquet: the ranking is
re-used, never re-scored. Its answer tokens (the title as the prompt showed it, then the
end-of-turn token; `evaluate.prompt_inputs`) are scored one by one with the shared-prefix scorer
(`workflow.llm.scoring.token_logprobs`) under

- the tuned model: the base model + the run's adapter (the model predictions.parquet came from;
  the token log-probs must sum to its score there, which is checked), and
- the reference model: the SFT adapter of the same selection (the frozen reference of the
  preference methods, DESIGN section 5), or the base model itself when the run is sft.

delta = logprob_tuned - logprob_reference per token, so the sum of a candidate's deltas is its
reward r(y) = log pi_theta(y|x) - log pi_ref(y|x). Both adapters are loaded onto ONE base model
(PEFT named adapters, switched per pass), so the stage needs the memory of one model.

Outputs: explanations.parquet (one row per token, EXPLANATIONS_SCHEMA) and explanations.html (one
self-contained page: per sample the history, the target and the top candidate's tokens shaded by
delta, green where the tuned model gives the token more probability than the reference, red where
less; hover a token for its numbers).

    python -m workflow.llm.explain --model-dir results/models/base \
        --adapter .../dmpo/random/adapter --reference-adapter .../sft/random/adapter \
        --predictions .../dmpo/random/predictions.parquet --samples ... --items ... \
        --spec '{"llm": {...}, "evaluation": {...}, "explanations": {...}, "domain": "movie"}' \
        --dataset ml-100k --method dmpo --selection random --seed 42 --threads 2 \
        --out-parquet .../explanations.parquet --out-html .../explanations.html
"""
from __future__ import annotations

import contextlib
import html
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from workflow import cli
from workflow.io import atomic_path, write_parquet
from workflow.llm import evaluate, inference
from workflow.runs import DEFAULT_PROMPT

log = logging.getLogger(__name__)

REFERENCE_ADAPTER = "reference"  # PEFT name of the reference adapter beside the run's own ("default")
TOP_RANK = 0  # the explained candidate is the run's first-ranked one

EXPLANATIONS_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("candidate_rank", pa.int32()),  # 0-based rank in the run's likelihood ranking (0 = top)
    ("item_id", pa.string()), ("title", pa.string()),  # title as the prompt showed it (clipped)
    ("is_target", pa.bool_()),
    ("position", pa.int32()),  # 0-based index of the token in the answer
    ("token_id", pa.int32()), ("token", pa.string()),  # token text: the id decoded on its own
    ("logprob_tuned", pa.float32()), ("logprob_reference", pa.float32()), ("delta", pa.float32()),
])
PREDICTION_COLUMNS = ["sample_id", "candidates", "candidate_logprob"]

# Largest |sum of the tuned token log-probs - the predictions' score| per answer token accepted as
# "the same model". In float32 the only differences from the evaluation's pass are packing (one
# candidate per row here, all of them there) and batch padding: ~1e-6. bf16/fp16 autocast rounds
# every matmul to ~3 significant digits, and packing changes which roundings happen: measured up to
# 0.011 per token (0.14 per title) on SmolLM2-135M's sft adapter over 100 ML-100K test samples,
# while another adapter or the base model moves a title's first token alone by ~1 to 5.
SCORE_TOLERANCE_FP32 = 1e-3
SCORE_TOLERANCE_AUTOCAST = 0.1


def settings(spec: dict[str, Any]) -> tuple[dict, dict, dict, str, str]:
    """(llm, evaluation, explanations, domain, prompt) from --spec, validated and completed by config/schema.yaml."""
    from workflow.config import stage_settings

    s = stage_settings(spec, {"llm": "llm", "evaluation": "evaluation", "explanations": "explanations"})
    return s["llm"], s["evaluation"], s["explanations"], s["domain"], s["prompt"]


# ---------------------------------------------------------------------------------------------
# which samples, which candidate

def first_samples(samples: pd.DataFrame, n_samples: int, samples_path: str | Path) -> pd.DataFrame:
    """The first `n_samples` rows of the evaluated samples, in samples.parquet order."""
    if n_samples > len(samples):
        splits = sorted(set(samples["split"]))
        raise ValueError(f"{samples_path}: explanations.n_samples={n_samples}, but only {len(samples)} samples "
                         f"are evaluated (splits {splits}); lower explanations.n_samples")
    return samples.iloc[:n_samples].reset_index(drop=True)


def read_predictions(path: str | Path) -> pd.DataFrame:
    predictions = pd.read_parquet(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (not a predictions.parquet of workflow.llm.evaluate)")
    return predictions


def top_candidates(samples: pd.DataFrame, predictions: pd.DataFrame,
                   predictions_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(index of each sample's top candidate in its candidate list, that candidate's score), read
    from the run's predictions. Ties go to the earlier candidate (np.argmax)."""
    by_id = predictions.assign(sample_id=predictions["sample_id"].astype(str)).set_index("sample_id")
    if not by_id.index.is_unique:
        raise ValueError(f"{predictions_path}: sample '{by_id.index[by_id.index.duplicated()][0]}' has several rows")
    absent = [s for s in samples["sample_id"].astype(str) if s not in by_id.index]
    if absent:
        raise ValueError(f"{predictions_path}: no rows for {len(absent)} of the samples to explain, e.g. "
                         f"{absent[:3]} (predictions of other samples or splits?)")
    top, score = np.zeros(len(samples), dtype=np.int64), np.zeros(len(samples), dtype=np.float64)
    for i, (sample_id, candidates) in enumerate(zip(samples["sample_id"].astype(str), samples["candidates"])):
        row = by_id.loc[sample_id]
        scores = row["candidate_logprob"]
        if scores is None or len(scores) == 0:
            raise ValueError(f"{predictions_path}: sample '{sample_id}' has no candidate_logprob "
                             "(evaluation.protocols must include likelihood)")
        if [str(c) for c in row["candidates"]] != list(candidates) or len(scores) != len(candidates):
            raise ValueError(f"{predictions_path}: sample '{sample_id}': the candidates differ from samples.parquet's")
        top[i] = int(np.argmax(scores))
        score[i] = float(scores[top[i]])
    return top, score


def check_scores(samples: pd.DataFrame, tuned: Sequence[np.ndarray], predicted: np.ndarray, tolerance: float,
                 predictions_path: str | Path) -> float:
    """The largest |sum of tuned token log-probs - predicted score|; an error when a sample's exceeds
    `tolerance` per answer token (the predictions came from another adapter, base model or prompt)."""
    deviation = np.array([abs(float(lp.sum()) - p) for lp, p in zip(tuned, predicted)])
    limit = tolerance * np.array([len(lp) for lp in tuned])
    bad = np.flatnonzero(deviation > limit)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{predictions_path}: sample '{samples['sample_id'].iloc[i]}': the top candidate's score "
                         f"{predicted[i]:.4f} differs from its log-prob under the tuned model "
                         f"{float(tuned[i].sum()):.4f}; were the predictions made with this adapter and these "
                         "llm settings?")
    return float(deviation.max())


# ---------------------------------------------------------------------------------------------
# model passes

def load_models(model_dir, adapter, reference_adapter=None, device: str = "auto", dtype: str = "auto",
                attention: str = "auto"):
    """(model, tokenizer, reference) with the run's adapter active; `reference()` is a context
    manager inside which the model is the reference: the reference adapter when given, else the
    base model (the run's adapter disabled)."""
    model, tokenizer = evaluate.load_for_evaluation(model_dir, adapter, device, dtype, attention)
    if reference_adapter is None:
        return model, tokenizer, lambda: inference.base_model_only(model)
    if not (Path(reference_adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{reference_adapter}: not a PEFT adapter folder (no adapter_config.json)")
    tuned = model.active_adapter
    model.load_adapter(str(reference_adapter), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    model.eval()

    @contextlib.contextmanager
    def reference():
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter(tuned)

    return model, tokenizer, reference


@torch.no_grad()
def answer_token_logprobs(model, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
                          batch_size: int, autocast: Callable) -> list[np.ndarray]:
    """Per sample, log pi(y_t | x, y_<t) of each token of its one answer (float32 [len(answer)])."""
    from workflow.llm.scoring import token_logprobs

    out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(prompt_ids)
    for chosen in inference.batches(inference.by_length(prompt_ids), batch_size):
        with autocast():
            logprobs, mask = token_logprobs(model, [prompt_ids[i] for i in chosen], [[answer_ids[i]] for i in chosen])
        for row, i in enumerate(chosen):
            out[i] = logprobs[row, 0][mask[row, 0]].float().cpu().numpy()
    return out


def explain(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, predictions: pd.DataFrame, *,
            reference: Callable[[], contextlib.AbstractContextManager], domain: str, llm: dict, batch_size: int,
            autocast: Callable = contextlib.nullcontext, score_tolerance: float = SCORE_TOLERANCE_FP32,
            predictions_path: str | Path = "predictions.parquet", prompt: str = DEFAULT_PROMPT) -> pd.DataFrame:
    """One row per answer token of each sample's top candidate (EXPLANATIONS_SCHEMA columns), samples
    in the order given. `model` is the tuned model; inside `reference()` it is the reference."""
    top, predicted = top_candidates(samples, predictions, predictions_path)
    inputs = evaluate.prompt_inputs(samples, items, tokenizer, domain, llm)
    prompt_ids = inputs[f"{prompt}_prompt"]  # the run's prompt, under which its predictions were scored
    answer_ids = [answers[t] for answers, t in zip(inputs["answers"], top)]
    tuned = answer_token_logprobs(model, prompt_ids, answer_ids, batch_size, autocast)
    worst = check_scores(samples, tuned, predicted, score_tolerance, predictions_path)
    log.info("tuned log-probs of %d top candidates match the predictions' scores (max deviation %.2e)",
             len(samples), worst)
    with reference():
        ref = answer_token_logprobs(model, prompt_ids, answer_ids, batch_size, autocast)

    frames = []
    for i, sample in enumerate(samples.itertuples(index=False)):
        item_id = sample.candidates[top[i]]
        delta = tuned[i] - ref[i]
        frames.append(pd.DataFrame({
            "sample_id": str(sample.sample_id), "candidate_rank": TOP_RANK, "item_id": item_id,
            "title": inputs["shown_titles"][i][top[i]], "is_target": item_id == str(sample.target),
            "position": np.arange(len(answer_ids[i]), dtype=np.int32),
            "token_id": np.asarray(answer_ids[i], dtype=np.int32),
            "token": [tokenizer.decode([t]) for t in answer_ids[i]],
            "logprob_tuned": tuned[i], "logprob_reference": ref[i], "delta": delta.astype(np.float32)}))
    return pd.concat(frames, ignore_index=True)[EXPLANATIONS_SCHEMA.names]


# ---------------------------------------------------------------------------------------------
# the page

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
section { border-top: 1px solid #ccc; padding: 0.5rem 0 1rem; }
ol { margin: 0.2rem 0; }
.answer { font-family: ui-monospace, monospace; font-size: 1.15rem; }
.tok { white-space: pre; padding: 0.1rem 0; border-radius: 2px; }
.hit { color: #070; } .miss { color: #a00; }
.numbers { color: #555; font-size: 0.9rem; }
"""


def token_colour(delta: float, scale: float) -> str:
    """Background of a token: green when the tuned model gives it more probability than the
    reference, red when less; opacity |delta| / scale (full at the page's largest |delta|)."""
    alpha = min(abs(delta) / scale, 1.0) if scale > 0 else 0.0
    rgb = "0, 160, 0" if delta > 0 else "220, 0, 0"
    return f"rgba({rgb}, {alpha:.3f})"


def token_span(row, scale: float) -> str:
    tooltip = (f"token {row.token_id} at {row.position}: log-prob tuned {row.logprob_tuned:.4f}, "
               f"reference {row.logprob_reference:.4f}, delta {row.delta:+.4f}")
    return (f'<span class="tok" style="background: {token_colour(row.delta, scale)}" '
            f'title="{html.escape(tooltip)}">{html.escape(row.token)}</span>')


def render_html(tokens: pd.DataFrame, samples: pd.DataFrame, titles: dict[str, str], heading: str) -> str:
    """The self-contained explanations page (inline CSS, no script, no external resource)."""
    esc = html.escape
    scale = float(tokens["delta"].abs().max()) if len(tokens) else 0.0
    blocks = []
    for sample in samples.itertuples(index=False):
        answer = tokens[tokens["sample_id"] == str(sample.sample_id)]
        first = answer.iloc[0]
        verdict = ('<span class="hit">the target</span>' if first.is_target
                   else '<span class="miss">not the target</span>')
        history = "".join(f"<li>{esc(titles[i])}</li>" for i in sample.history)
        spans = "".join(token_span(row, scale) for row in answer.itertuples(index=False))
        tuned, ref = float(answer["logprob_tuned"].sum()), float(answer["logprob_reference"].sum())
        blocks.append(
            f'<section id="{esc(str(sample.sample_id), quote=True)}">\n'
            f"<h2>Sample {esc(str(sample.sample_id))}</h2>\n"
            f"<p>History, oldest first:</p>\n<ol>{history}</ol>\n"
            f"<p>Target: {esc(titles[str(sample.target)])}</p>\n"
            f"<p>Top candidate ({verdict}): <span class=\"answer\">{spans}</span></p>\n"
            f'<p class="numbers">log-prob tuned {tuned:.4f}, reference {ref:.4f}, '
            f"reward (sum of deltas) {tuned - ref:+.4f}</p>\n</section>")
    legend = (f'Each token of the top candidate is shaded by delta = log-prob tuned - log-prob reference: '
              f'<span class="tok" style="background: {token_colour(1, 1)}">higher than the reference</span>, '
              f'<span class="tok" style="background: {token_colour(-1, 1)}">lower</span>; full colour at '
              f"|delta| = {scale:.4f}, the largest on this page. Hover a token for its numbers.")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>Explanations: {esc(heading)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>Explanations: {esc(heading)}</h1>\n<p>{legend}</p>\n" + "\n".join(blocks) + "\n</body>\n</html>\n")


def write_html(page: str, path: str | Path) -> Path:
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)


# ---------------------------------------------------------------------------------------------
# the command line

def score_tolerance(device: str, dtype: str) -> float:
    from workflow.llm.model import resolve_dtype

    return SCORE_TOLERANCE_FP32 if resolve_dtype(dtype, device) == torch.float32 else SCORE_TOLERANCE_AUTOCAST


def main(argv=None) -> int:
    p = cli.parser("Per-token log-probs of a trained run's top candidate, tuned vs reference model.")
    p.add_argument("--model-dir", required=True, help="the base model folder")
    p.add_argument("--adapter", required=True, help="the run's PEFT adapter (the tuned model)")
    p.add_argument("--reference-adapter", default=None,
                   help="the reference's PEFT adapter (the SFT adapter); omit to use the base model (sft runs)")
    p.add_argument("--predictions", required=True, help="the run's predictions.parquet (workflow.llm.evaluate)")
    p.add_argument("--samples", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--spec", type=cli.json_arg, required=True,
                   help='JSON {"llm": {...}, "evaluation": {...}, "explanations": {...}, "domain": "movie"}')
    cli.add_run_arguments(p)
    p.add_argument("--out-parquet", required=True)
    p.add_argument("--out-html", required=True)

    def run(args):
        from workflow.llm.model import autocast, resolve_device

        llm, evaluation, explanations, domain, prompt = settings(args.spec)
        torch.manual_seed(args.seed)
        samples = first_samples(evaluate.read_samples(args.samples, evaluation["splits"]),
                                explanations["n_samples"], args.samples)
        items = pd.read_parquet(args.items, columns=["item_id", "title"])
        items["item_id"] = items["item_id"].astype(str)
        predictions = read_predictions(args.predictions)
        model, tokenizer, reference = load_models(args.model_dir, args.adapter, args.reference_adapter,
                                                  llm["device"], llm["dtype"], llm["attention"])
        device = resolve_device(llm["device"])
        log.info("%s/%s/%s: explaining %d samples, reference %s", args.dataset, args.run, args.selection,
                 len(samples), args.reference_adapter or "the base model")
        tokens = explain(model, tokenizer, samples, items, predictions, reference=reference, domain=domain, llm=llm,
                         batch_size=evaluation["batch_size"], autocast=lambda: autocast(device, llm["dtype"]),
                         score_tolerance=score_tolerance(llm["device"], llm["dtype"]),
                         predictions_path=args.predictions, prompt=prompt)
        provenance = dict(config={"llm": llm, "evaluation": evaluation, "explanations": explanations, "domain": domain,
                                  "prompt": prompt},
                          seed=args.seed, model_dir=str(args.model_dir), adapter=str(args.adapter),
                          reference_adapter=str(args.reference_adapter) if args.reference_adapter else None,
                          predictions=str(args.predictions))
        titles = dict(zip(items["item_id"], items["title"].astype(str)))
        page = render_html(tokens, samples, titles, f"{args.dataset} / {args.run} / {args.selection}")
        write_parquet(tokens, args.out_parquet, schema=EXPLANATIONS_SCHEMA, **provenance)
        write_html(page, args.out_html)
        hits = tokens.drop_duplicates("sample_id")["is_target"].mean()
        log.info("wrote %d tokens of %d samples (top candidate is the target in %.0f%%), mean delta %+.4f",
                 len(tokens), len(samples), 100 * hits, tokens["delta"].mean())

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
