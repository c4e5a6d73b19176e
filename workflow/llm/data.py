"""What every training stage reads: the selected train samples, the prompts' token ids and the
examples built from them (SFT's, preference training's, which the reference scores too).

A run's `-n<budget>` subset is its own step (`workflow.selection.budget`, rule `budget_subset`): the
stages get the subset's file as their selection, so the LLM package never reads a selection's
internals (it does not import `workflow.selection`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from workflow.prepare import SAMPLE_COLUMNS, read_samples
from workflow.runs import DEFAULT_PROMPT, ID_PROMPTS, PROMPTS

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


def _sample_items(row, titles: dict[str, str]) -> tuple[list[str], list[str], str]:
    """A sample's history, candidates and target as item-id strings, each one checked against the
    items table (`titles`), so a training set that names an unknown item fails naming the sample."""
    history, candidates, target = [str(i) for i in row.history], [str(i) for i in row.candidates], str(row.target)
    unknown = [i for i in [*history, *candidates, target] if i not in titles]
    if unknown:
        raise ValueError(f"sample '{row.sample_id}': item '{unknown[0]}' is not in the items table")
    return history, candidates, target


def sft_examples(samples: pd.DataFrame, items: pd.DataFrame, tokenizer, domain: str,
                 llm: dict[str, Any], prompt: str = DEFAULT_PROMPT, item_marker: str | None = None
                 ) -> list[dict[str, list[int]]]:
    """Per sample {"prompt": the prompt's ids, "answer": the target's answer ids}."""
    from workflow.llm import prompts

    titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
    examples = []
    for row in samples.itertuples(index=False):
        history, candidates, target = _sample_items(row, titles)
        if target not in candidates:
            raise ValueError(f"sample '{row.sample_id}': the target is not among its candidates")
        ids = prompt_ids(tokenizer, prompt, [titles[i] for i in history], [titles[i] for i in candidates],
                         domain, llm, item_marker)
        answer = prompts.clipped_answer_ids(tokenizer, titles[target], llm["max_title_tokens"])
        examples.append({"prompt": ids, "answer": answer})
    return examples


def preference_examples(samples: pd.DataFrame, items: pd.DataFrame, tokenizer, domain: str,
                        llm: dict[str, Any], prompt: str = DEFAULT_PROMPT) -> list[dict[str, Any]]:
    """Per sample: the run's prompt, every candidate's answer ids, and the target's index. Under
    the open prompt the negatives are the other candidates' titles as answers to the history alone."""
    from workflow.llm import prompts

    titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
    examples = []
    for row in samples.itertuples(index=False):
        history, candidates, target = _sample_items(row, titles)
        if candidates.count(target) != 1:
            raise ValueError(f"sample '{row.sample_id}': the target must be among its candidates exactly once")
        ids = prompt_ids(tokenizer, prompt, [titles[i] for i in history], [titles[i] for i in candidates],
                         domain, llm)
        answers = [prompts.clipped_answer_ids(tokenizer, titles[i], llm["max_title_tokens"]) for i in candidates]
        examples.append({"sample_id": str(row.sample_id), "prompt": ids, "answers": answers,
                         "candidates": candidates, "target": candidates.index(target)})
    return examples
