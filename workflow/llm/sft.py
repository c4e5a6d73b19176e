"""Supervised fine-tuning (SFT) with LoRA: the model learns to answer the run's prompt (`candidate`,
LLaRA style, or `open`, BIGRec style; workflow.llm.prompts) with the target's title.

Loss: cross-entropy on the answer tokens only (title + end-of-turn), token mean over the batch,
computed by the shared scorer with one candidate per sample (`scoring.answer_logprobs`): the prompt
gets no loss, and the LM head runs only at answer positions, so no full-vocabulary logits are built
for the ~250 prompt tokens. The answer is tokenised exactly as evaluation tokenises candidates
(`prompts.clipped_answer_ids`), so what SFT raises is what the likelihood protocol scores.

    python -m workflow.llm.sft --model-dir results/models/base --samples .../samples.parquet \
        --items .../items.parquet --selection .../selection/random.parquet \
        --spec '{"llm": {...}, "sft": {...}, "domain": "movie"}' --seed 42 --threads 2 --out .../adapter

The output folder holds the PEFT adapter (adapter_model.safetensors, adapter_config.json),
training_config.json and train_log.parquet. A checkpoint folder OUT.ckpt beside it lets a killed
job resume; it is removed once the adapter is saved.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from workflow import cli
from workflow.llm import train

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["sample_id", "split", "history", "target", "candidates"]


def settings(spec: dict[str, Any]) -> dict[str, Any]:
    """{llm, sft, domain, prompt, budget} from --spec, validated and completed by config/schema.yaml."""
    from workflow.config import stage_settings

    return stage_settings(spec, {"llm": "llm", "sft": "sft"})


def read_training_samples(samples_path: str | Path, selection_path: str | Path, budget: int | None = None,
                          seed: int = 0) -> pd.DataFrame:
    """The selected train samples, sorted by sample_id (the row order of the files does not matter);
    with `budget`, that many of them (`selection.subset`, a run's -n)."""
    samples = pd.read_parquet(samples_path)
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"{samples_path}: missing columns {missing}")
    selection = pd.read_parquet(selection_path)
    if "sample_id" not in selection.columns:
        raise ValueError(f"{selection_path}: no sample_id column")
    chosen = set(selection["sample_id"].astype(str))
    samples = samples.assign(sample_id=samples["sample_id"].astype(str))
    picked = samples[samples["sample_id"].isin(chosen)]
    unknown = sorted(chosen - set(picked["sample_id"]))
    if unknown:
        raise ValueError(f"{selection_path}: {len(unknown)} sample ids are not in {samples_path}, e.g. {unknown[:3]}")
    not_train = picked.loc[picked["split"] != "train", "sample_id"]
    if len(not_train):
        raise ValueError(f"{selection_path}: sample '{not_train.iloc[0]}' is not a train sample")
    if picked.empty:
        raise ValueError(f"{selection_path}: selects no samples")
    if budget is not None:
        from workflow.selection import subset

        if budget > len(picked):
            raise ValueError(f"{selection_path}: a budget of {budget} samples asked for, the selection holds "
                             f"{len(picked)} (raise selection.budget or lower the run's -n)")
        # random: a nested seeded subset; a DEALRec selection: DEALRec re-run at this budget on the
        # selection's scored candidates (not necessarily inside the larger selection)
        picked = samples[samples["sample_id"].isin(set(subset(selection_path, budget, seed)))]
    return picked.sort_values("sample_id", kind="stable").reset_index(drop=True)


def prompt_ids(tokenizer, prompt: str, history_titles, candidate_titles, domain: str, llm: dict[str, Any],
               item_marker: str | None = None) -> list[int]:
    """The rendered prompt of kind `prompt` (candidate: history and candidates; open: history only);
    `item_marker` after every listed title for the hybrid prompt (workflow/llm/llara.py)."""
    from workflow.llm import prompts

    budget = dict(max_title_tokens=llm["max_title_tokens"], max_prompt_tokens=llm["max_prompt_tokens"],
                  item_marker=item_marker)
    if prompt == "candidate":
        return prompts.candidate_prompt_ids(tokenizer, history_titles, candidate_titles, domain, **budget)
    if prompt == "open":
        return prompts.open_prompt_ids(tokenizer, history_titles, domain, **budget)
    raise ValueError(f"unknown prompt {prompt!r} (known: candidate, open)")


def sft_examples(samples: pd.DataFrame, items: pd.DataFrame, tokenizer, domain: str,
                 llm: dict[str, Any], prompt: str = "candidate", item_marker: str | None = None
                 ) -> list[dict[str, list[int]]]:
    """Per sample {"prompt": the prompt's ids, "answer": the target's answer ids}."""
    from workflow.llm import prompts

    titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
    examples = []
    for row in samples.itertuples(index=False):
        history, candidates, target = [str(i) for i in row.history], [str(i) for i in row.candidates], str(row.target)
        unknown = [i for i in [*history, *candidates, target] if i not in titles]
        if unknown:
            raise ValueError(f"sample '{row.sample_id}': item '{unknown[0]}' is not in the items table")
        if target not in candidates:
            raise ValueError(f"sample '{row.sample_id}': the target is not among its candidates")
        ids = prompt_ids(tokenizer, prompt, [titles[i] for i in history], [titles[i] for i in candidates],
                         domain, llm, item_marker)
        answer = prompts.clipped_answer_ids(tokenizer, titles[target], llm["max_title_tokens"])
        examples.append({"prompt": ids, "answer": answer})
    return examples


def collate(examples: Sequence[dict[str, list[int]]]) -> tuple[list[list[int]], list[list[int]]]:
    return [e["prompt"] for e in examples], [e["answer"] for e in examples]


def sft_loss(model, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood per answer token over the batch. `tokens` counts what the
    forward pass runs on (prompt + answer, the answer's last token only predicted), for tokens/s."""
    from workflow.llm.scoring import answer_logprobs

    prompt_ids, answer_ids = batch
    logprob, n_tokens = answer_logprobs(model, prompt_ids, answer_ids)
    total = n_tokens.sum()
    processed = sum(len(p) + len(a) - 1 for p, a in zip(prompt_ids, answer_ids))
    return -logprob.sum() / total, total, {"tokens": processed}


def run_sft(model_dir: str | Path, samples_path: str | Path, items_path: str | Path, selection_path: str | Path,
            spec: dict[str, Any], seed: int, out: str | Path) -> Path:
    """Train a LoRA adapter by SFT and save it to `out` (see the module docstring)."""
    from workflow.llm.model import autocast, load_for_training

    s = settings(spec)
    llm, sft, domain = s["llm"], s["sft"], s["domain"]
    samples = read_training_samples(samples_path, selection_path, s["budget"], seed)
    items = pd.read_parquet(items_path, columns=["item_id", "title"])
    model, tokenizer, device, compute = load_for_training(model_dir, llm)
    examples = sft_examples(samples, items, tokenizer, domain, llm, s["prompt"])
    n_answer = sum(len(e["answer"]) for e in examples)
    n_prompt = sum(len(e["prompt"]) for e in examples)
    log.info("SFT on %d samples, %s prompt: %d prompt + %d answer tokens, %d epochs", len(examples), s["prompt"],
             n_prompt, n_answer, sft["epochs"])
    model = train.add_lora(model, sft, seed)
    train.cast_frozen_linears(model, compute)  # autocast's results, faster
    checkpoint = train.checkpoint_dir_for(out)
    source = Path(model_dir) / "llmrec_source.json"
    train_log = train.train(
        model, examples, collate, sft_loss, sft, seed=seed, checkpoint_dir=checkpoint,
        autocast=lambda: autocast(device, compute), desc="sft", scaler=train.grad_scaler(device, compute),
        fingerprint_extra={"model_dir": str(model_dir), "source": source.read_text() if source.exists() else None},
    )
    config = {"llm": llm, "sft": sft, "domain": domain, "prompt": s["prompt"], "budget": s["budget"],
              "model_dir": str(model_dir),
              "samples": str(samples_path), "selection": str(selection_path), "n_samples": len(examples)}
    train.save_adapter(model, out, config, train_log, seed)
    train.remove_checkpoint(checkpoint)
    last = train_log.tail(max(1, len(train_log) // 10))
    log.info("saved %s: %d steps, final loss %.4f, %.0f tokens/s", out, len(train_log), last["loss"].mean(),
             train_log["tokens"].sum() / train_log["seconds"].sum())
    return Path(out)


def main(argv=None) -> int:
    p = cli.parser("LoRA supervised fine-tuning on the candidate or open prompt, loss on the answer tokens.")
    cli.add_training_arguments(p, "sft")
    return cli.run(lambda a: run_sft(a.model_dir, a.samples, a.items, a.selection, a.spec, a.seed, a.out), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
