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
job resume; it is removed once the adapter is saved. With --start-adapter the run trains that adapter
further (SPRec's per-round SFT phase) instead of a fresh LoRA.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from workflow import cli
from workflow.llm import stage, train
from workflow.llm.data import sft_examples
from workflow.runs import ID_PROMPTS

log = logging.getLogger(__name__)

def settings(spec: dict[str, Any]) -> dict[str, Any]:
    """{llm, sft, domain, prompt, budget} from --spec, validated and completed by config/schema.yaml."""
    from workflow.config import stage_settings

    return stage_settings(spec, {"llm": "llm", "sft": "sft"})


def alignment_examples(samples: pd.DataFrame, items: pd.DataFrame, tokenizer, domain: str, llm: dict[str, Any]
                       ) -> list[dict[str, list[int]]]:
    """The ID -> title and title -> ID examples (`prompts.alignment_prompts`) of every item of the
    samples (targets and histories), in item-id order; `items` is the sid table (title = ID, text =
    the title)."""
    from workflow.llm import prompts

    if "text" not in items.columns:
        raise ValueError("sft.sid_alignment needs the sid items table (item titles in column `text`, "
                         "rule semantic_ids)")
    used = sorted({str(i) for h in samples["history"] for i in h} | set(samples["target"].astype(str)))
    rows = items.set_index(items["item_id"].astype(str))
    examples = []
    for item in used:
        title = prompts.clip_title(tokenizer, str(rows.at[item, "text"]), llm["max_title_tokens"])
        for text, answer in prompts.alignment_prompts(str(rows.at[item, "title"]), title, domain):
            examples.append({"prompt": prompts.render(tokenizer, text),
                             "answer": prompts.answer_ids(tokenizer, answer)})
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


def method(block: dict[str, Any], llm: dict[str, Any], domain: str, prompt: str, seed: int,
           start_adapter: str | Path | None = None) -> stage.Method:
    """SFT as a training stage: the target's title as the answer, `sft_loss`, on a fresh LoRA or, with
    `start_adapter`, on that adapter trained further (SPRec's per-round SFT phase)."""
    def attach(model, tokenizer):
        if start_adapter is None:
            return train.add_lora(model, block, seed, tokenizer)
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(start_adapter), is_trainable=True)

    def plan(loaded: stage.Loaded) -> stage.Plan:
        examples = sft_examples(loaded.samples, loaded.items, loaded.tokenizer, domain, llm, prompt)
        if prompt in ID_PROMPTS and block["sid_alignment"]:
            aligned = alignment_examples(loaded.samples, loaded.items, loaded.tokenizer, domain, llm)
            log.info("with %d ID <-> title alignment examples", len(aligned))
            examples += aligned
        log.info("SFT on %d samples, %s prompt: %d prompt + %d answer tokens, %d epochs%s", len(examples), prompt,
                 sum(len(e["prompt"]) for e in examples), sum(len(e["answer"]) for e in examples), block["epochs"],
                 "" if start_adapter is None else f", from {start_adapter}")
        start = {} if start_adapter is None else {"start_adapter": str(start_adapter)}
        return stage.Plan(examples, collate, sft_loss, fingerprint=start, config=start)

    return stage.Method("sft", block, attach, plan)


def run_sft(model_dir: str | Path, samples_path: str | Path, items_path: str | Path, selection_path: str | Path,
            spec: dict[str, Any], seed: int, out: str | Path, start_adapter: str | Path | None = None) -> Path:
    """Train a LoRA adapter by SFT and save it to `out` (see the module docstring)."""
    s = settings(spec)
    llm, sft, domain = s["llm"], s["sft"], s["domain"]
    if start_adapter is not None and not (Path(start_adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{start_adapter}: no adapter_config.json "
                                "(--start-adapter must be a PEFT adapter folder)")
    stage.run_stage(method(sft, llm, domain, s["prompt"], seed, start_adapter), model_dir=model_dir,
                    samples_path=samples_path, items_path=items_path, selection_path=selection_path, llm=llm,
                    seed=seed, out=out,
                    config={"sft": sft, "domain": domain, "prompt": s["prompt"], "budget": s["budget"]})
    return Path(out)


def main(argv=None) -> int:
    p = cli.parser("LoRA supervised fine-tuning on the candidate or open prompt, loss on the answer tokens.")
    cli.add_training_arguments(p, "sft")
    p.add_argument("--start-adapter", default=None,
                   help="train this PEFT adapter further instead of a fresh LoRA (SPRec's per-round SFT phase); "
                        "its LoRA settings stand, the sft block's lora keys are not used")
    return cli.run(lambda a: run_sft(a.model_dir, a.samples, a.items, a.selection, a.spec, a.seed, a.out,
                                     a.start_adapter), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
