# The input functions of rules/tuning.smk: what waits for the selection (a checkpoint); its paths and
# specs are workflow/dag.py's and workflow/tuning.py's.
from pathlib import Path

from workflow.dag import (sasrec_trial_part, tuned_runs as runs_of_tuning, tuned_files, tuning_path,
                          tuning_selection_inputs, tuning_selection_spec)
from workflow.tuning import sasrec_trial_settings, table_spec as tuning_table_spec


def tuned_runs(wildcards):
    """The default and selected runs whose test metrics the tuned table reads, once the selection has run."""
    return runs_of_tuning(config, checkpoints.tuning_selection.get().output.parquet)
