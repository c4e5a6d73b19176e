"""What every training stage reads: the selected train samples and the prompts' token ids.

A run's `-n<budget>` subset is its own step (`workflow.selection.budget`, rule `budget_subset`): the
stages get the subset's file as their selection, so the LLM package never reads a selection's
internals (it does not import `workflow.selection`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from workflow.prepare import SAMPLE_COLUMNS, read_samples
from workflow.runs import ID_PROMPTS, PROMPTS

TRAINING_COLUMNS = tuple(c for c in SAMPLE_COLUMNS if c != "user_id")  # training never reads the user


def read_training_samples(samples_path: str | Path, selection_path: str | Path) -> pd.DataFrame:
    """The selected train samples, sorted by sample_id (the row order of the files does not matter)."""
    samples = read_samples(samples_path, columns=TRAINING_COLUMNS)
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
    return picked.sort_values("sample_id", kind="stable").reset_index(drop=True)


def prompt_ids(tokenizer, prompt: str, history_titles, candidate_titles, domain: str, llm: dict[str, Any],
               item_marker: str | None = None) -> list[int]:
    """The rendered prompt of kind `prompt` (candidate: history and candidates; open: history only;
    sid, cid: history only, every item shown by its code ID);
    `item_marker` after every listed title for the hybrid prompt (workflow/llm/llara.py)."""
    from workflow.llm import prompts

    budget = dict(max_title_tokens=llm["max_title_tokens"], max_prompt_tokens=llm["max_prompt_tokens"],
                  item_marker=item_marker)
    if prompt == "candidate":
        return prompts.candidate_prompt_ids(tokenizer, history_titles, candidate_titles, domain, **budget)
    if prompt == "open":
        return prompts.open_prompt_ids(tokenizer, history_titles, domain, **budget)
    if prompt in ID_PROMPTS:  # the items' "titles" are their code IDs (the prompt's items table)
        return prompts.sid_prompt_ids(tokenizer, history_titles, domain, max_prompt_tokens=llm["max_prompt_tokens"])
    raise ValueError(f"unknown prompt {prompt!r} (known: {', '.join(PROMPTS)})")
