# The input functions of rules/preference.smk.
from workflow.dag import preference_args, preference_spec, reference_spec, sft_phase_spec, start_run
from workflow.methods import METHODS as METHOD_DECLARATIONS
from workflow.runs import needs_reference, sft_phase


def start_file(wildcards, name):
    """A file (its adapter or its reference log-probs) of the run a preference run starts from and is
    referenced against (workflow/dag.py start_run: the sft run; for an SPRec round, the previous round)."""
    return run_path(config, wildcards.dataset, start_run(config, wildcards.run).name, wildcards.selection, name)


def preference_inputs(wildcards):
    """What a preference run reads beside the dataset and its selection: its start's adapter and,
    unless the run is reference-free (workflow/runs.py needs_reference: lpo4rec), its start's
    reference log-probs. An SPRec round with its SFT phase starts from, and is referenced against,
    that phase's adapter, and ranks its negatives by its start's log-probs (the previous model's)."""
    run = parse_run(wildcards.run)
    if sft_phase(run, config):
        phase = partial(run_path, config, wildcards.dataset, wildcards.run, wildcards.selection, "sft_phase")
        return {"adapter": phase("adapter"), "reference": phase("reference_logprobs.parquet"),
                "negatives": start_file(wildcards, "reference_logprobs.parquet")}
    inputs = {"adapter": start_file(wildcards, "adapter")}
    if needs_reference(run, config):
        inputs["reference"] = start_file(wildcards, "reference_logprobs.parquet")
    if METHOD_DECLARATIONS[run.method].surrogate:  # napo's auxiliary recommender: scores, user vectors
        inputs.update(surrogate_tables(config, wildcards.dataset))
    return inputs
