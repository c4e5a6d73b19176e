# The input functions of rules/preference.smk.


def start_file(wildcards, name):
    """A file (`name`: its adapter or its reference log-probs) of the run a preference run starts
    from and is referenced against: the sft run of the same prompt, budget and seed; for an SPRec
    round after the first, the previous round (workflow/runs.py previous_round)."""
    run = parse_run(wildcards.run)
    start = previous_round(run, config) or run.sft()
    return f"{RESULTS}/{wildcards.dataset}/llm/{start.name}/{wildcards.selection}/{name}"


def preference_inputs(wildcards):
    """What a preference run reads beside the dataset and its selection: its start's adapter and,
    unless the run is reference-free (workflow/runs.py needs_reference: lpo4rec), its start's
    reference log-probs."""
    inputs = {"adapter": start_file(wildcards, "adapter")}
    if needs_reference(parse_run(wildcards.run), config):
        inputs["reference"] = start_file(wildcards, "reference_logprobs.parquet")
    return inputs


def reference_arg(wildcards, input):
    """A params function: `--reference TABLE` when the run reads one."""
    return ["--reference", input.reference] if "reference" in input.keys() else []
