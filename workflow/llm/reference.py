"""The preference methods' reference log-probs, scored once per (dataset, selection).

The reference is the frozen SFT model (DESIGN section 5). It never changes, so log pi_ref(y|x) of
EVERY candidate of every selected training sample is scored once, without gradients, by the
evaluation's prompt-cache scorer (`inference.prompt_passes`: each prompt encoded once, no-grad
attention), and written to one table that every preference run of the selection reads: dmpo,
sdpo, dynamicpo and the collapse study's runs at other k. Scoring all candidates lets any negative
strategy (random, hardest, all) and any k pick its columns from the same table.

    python -m workflow.llm.reference --model-dir results/models/base --adapter .../sft/random/adapter \
        --samples .../samples.parquet --items .../items.parquet --selection .../selection/random.parquet \
        --spec '{"llm": {...}, "evaluation": {"batch_size": 8}, "domain": "movie"}' \
        --seed 42 --threads 2 --out .../sft/random/reference_logprobs.parquet
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from workflow import cli
from workflow.io import write_parquet
from workflow.runs import DEFAULT_PROMPT

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("candidates", pa.list_(pa.string())),
    ("candidate_logprob", pa.list_(pa.float32())), ("candidate_tokens", pa.list_(pa.int32())),
])


def reference_table(model, tokenizer, samples: pd.DataFrame, items: pd.DataFrame, *, domain: str, llm: dict,
                    batch_size: int, autocast: Callable, prompt: str = DEFAULT_PROMPT) -> pd.DataFrame:
    """One row per sample: its candidates (item ids, as in the samples) and their summed log-probs
    and answer token counts under `model`, with the prompts and answers preference training uses."""
    from workflow.llm.data import preference_examples
    from workflow.llm.inference import prompt_passes

    examples = preference_examples(samples, items, tokenizer, domain, llm, prompt)
    logprob, tokens, _ = prompt_passes(model, tokenizer, [e["prompt"] for e in examples],
                                       [e["answers"] for e in examples], batch_size=batch_size, autocast=autocast)
    return pd.DataFrame({"sample_id": [e["sample_id"] for e in examples],
                         "candidates": [e["candidates"] for e in examples],
                         "candidate_logprob": list(logprob), "candidate_tokens": list(tokens.astype(np.int32))})


def settings(spec: dict[str, Any]) -> dict[str, Any]:
    """{llm, evaluation (its batch size), domain, prompt, budget} from --spec, validated and completed by
    config/schema.yaml."""
    from workflow.config import stage_settings

    return stage_settings(spec, {"llm": "llm", "evaluation": "evaluation"})


def main(argv=None) -> int:
    p = cli.parser("Reference log-probs (the frozen SFT model) of every candidate of the selected training samples.")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True, help="the SFT adapter (the reference)")
    p.add_argument("--samples", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--selection", required=True)
    p.add_argument("--spec", type=cli.json_arg, required=True,
                   help='JSON {"llm": {...}, "evaluation": {"batch_size": 8}, "domain": "movie", "prompt": "open", '
                        '"budget": null}')
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)

    def run(args):
        from workflow.llm.data import read_training_samples
        from workflow.llm.model import autocast, load_for_evaluation, resolve_device
        from workflow.semantic_ids import sid_tokens

        s = settings(args.spec)
        llm, evaluation, domain = s["llm"], s["evaluation"], s["domain"]
        torch.manual_seed(args.seed)
        samples = read_training_samples(args.samples, args.selection)
        items = pd.read_parquet(args.items, columns=["item_id", "title"])
        model, tokenizer = load_for_evaluation(args.model_dir, args.adapter, llm["device"], llm["dtype"],
                                               llm["attention"], item_tokens=sid_tokens(items))
        device = resolve_device(llm["device"])
        start = time.perf_counter()
        table = reference_table(model, tokenizer, samples, items, domain=domain, llm=llm,
                                batch_size=evaluation["batch_size"], autocast=lambda: autocast(device, llm["dtype"]),
                                prompt=s["prompt"])
        log.info("reference log-probs of %d samples x %d candidates in %.1f s", len(table),
                 len(table["candidates"].iloc[0]), time.perf_counter() - start)
        write_parquet(table, args.out, schema=SCHEMA, seed=args.seed,
                      config={"llm": llm, "batch_size": evaluation["batch_size"], "domain": domain,
                              "prompt": s["prompt"], "budget": s["budget"]},
                      model_dir=str(args.model_dir), adapter=str(args.adapter), samples=str(args.samples),
                      selection=str(args.selection))

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
