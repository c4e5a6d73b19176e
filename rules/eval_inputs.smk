# The input functions of rules/eval.smk.
from workflow.dag import evaluation_spec, run_protocols, stored_inputs, summary_metrics
from workflow.runs import HYBRID


def evaluation_inputs(wildcards):
    """What evaluating a run needs: the base model and the dataset; the run's adapter unless it is the
    base model (for a transferred run, the one trained on {trained_on}); the surrogate tables for a
    llara or ilora run; the stored inputs its protocols read (stored_inputs)."""
    run = parse_run(wildcards.run)
    inputs = {"model": BASE_MODEL, **dataset_files(config, wildcards.dataset, "samples"),
              "item_table": run_items(wildcards)}
    if run.method != "base":
        trained_on = wildcards.trained_on if "trained_on" in wildcards.keys() else wildcards.dataset
        inputs["adapter"] = run_path(config, trained_on, wildcards.run, wildcards.selection, "adapter")
    if run.method in HYBRID:
        inputs |= surrogate_tables(config, wildcards.dataset)
    return inputs | stored_inputs(config, wildcards.dataset, run_protocols(config, run, wildcards.split))
