# The input functions of rules/preference.smk.


def preference_start(name):
    """An input function: a file of the run a preference run starts from and is referenced against
    (`name`: its adapter or its reference log-probs): the sft run of the same prompt, budget and
    seed; for an SPRec round after the first, the previous round (workflow/runs.py previous_round)."""
    def path(wildcards):
        run = parse_run(wildcards.run)
        start = previous_round(run, config) or run.sft()
        return f"{RESULTS}/{wildcards.dataset}/llm/{start.name}/{wildcards.selection}/{name}"
    return path


def preference_inputs(wildcards):
    """What a preference run reads: the dataset, its selection, its start's adapter and, unless the
    run is reference-free (workflow/runs.py needs_reference: lpo4rec), its start's reference log-probs."""
    inputs = {"adapter": preference_start("adapter")(wildcards)}
    if needs_reference(parse_run(wildcards.run), config):
        inputs["reference"] = preference_start("reference_logprobs.parquet")(wildcards)
    return inputs


def reference_arg(wildcards, input):
    """A params function: `--reference TABLE` when the run reads one."""
    return ["--reference", input.reference] if "reference" in input.keys() else []
