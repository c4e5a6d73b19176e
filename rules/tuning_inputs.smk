# The input functions of rules/tuning.smk.
from pathlib import Path

import pandas as pd

from workflow.runs import config_seeds
from workflow.tuning import (sasrec_trial_settings, sasrec_trials, selection_spec as tuning_selection_spec,
                             table_runs as tuning_table_runs, tuning_studies)

SASREC_TRIAL = f"{RESULTS}/{{dataset}}/tuning/sasrec/{{trial}}/s{{seed}}"  # one SASRec trial at one seed
SASREC_TRIALS = sasrec_trials(config)["trials"]
TUNING_SEEDS = config["tuning"]["seeds"] or config_seeds(config)


def study_table(name):
    return f"{RESULTS}/studies/{name}.parquet"


def sasrec_trial_file(trial, seed, name):
    """A file of SASRec trial `trial` at `seed`, on the first dataset (tuning selects on one)."""
    return f"{RESULTS}/{DATASETS[0]}/tuning/sasrec/{trial}/s{seed}/{name}"


def tuned_runs(wildcards):
    """The default and selected runs' test metrics, once the selection has run."""
    selected = pd.read_parquet(checkpoints.tuning_selection.get().output.parquet)
    return tuning_table_runs(config, selected, DATASETS, SELECTIONS[0], run_metrics, sasrec_trial_file)
