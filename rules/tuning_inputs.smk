# The input functions of rules/tuning.smk.
import pandas as pd

from workflow.tuning import selection_spec as tuning_selection_spec, table_runs as tuning_table_runs, tuning_studies


def tuned_runs(wildcards):
    """The default and selected runs' test metrics, once the selection has run."""
    selected = pd.read_parquet(checkpoints.tuning_selection.get().output.parquet)
    return tuning_table_runs(config, selected, DATASETS, SELECTIONS[0], run_metrics)
