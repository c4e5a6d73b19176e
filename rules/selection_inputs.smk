# The input functions of rules/selection.smk.
from pathlib import Path

from workflow.dag import dealrec_score_args, effort_sft_run, effort_spec
from workflow.selection.dealrec import STRATEGIES as DEALREC_STRATEGIES


def effort_inputs(wildcards):
    """The base model, the dataset, and the sft adapter the effort is measured on (workflow/dag.py
    effort_sft_run: with `effort.adapter: sft`, the DEALRec selection waits for that training)."""
    found = effort_sft_run(config)
    adapter = {"adapter": run_path(config, wildcards.dataset, found[0].name, found[1], "adapter")} if found else {}
    return {**adapter, "model": BASE_MODEL, **dataset_files(config, wildcards.dataset)}


def dealrec_inputs(wildcards):
    """The samples and the score tables a DEALRec strategy selects from: dealrec both, an ablation its own."""
    inputs = dataset_files(config, wildcards.dataset, "samples")
    for score in ("influence", "effort"):
        if wildcards.selection in ("dealrec", score):
            inputs[score] = f"{RESULTS}/{wildcards.dataset}/selection/scores/{score}.parquet"
    return inputs


def budget_inputs(wildcards):
    """The selection a -n subset is drawn from (and, for a DEALRec selection, its scored pool)."""
    folder = f"{RESULTS}/{wildcards.dataset}/selection"
    inputs = {"selection": f"{folder}/{wildcards.name}.parquet"}
    if wildcards.name in DEALREC_STRATEGIES:
        inputs["scores"] = f"{folder}/{wildcards.name}.scores.parquet"
    return inputs
