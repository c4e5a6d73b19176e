# The input functions of rules/preference.smk.


def start_file(wildcards, name):
    """A file (`name`: its adapter or its reference log-probs) of the run a preference run starts
    from and is referenced against: the sft run of the same prompt, budget and seed; for an SPRec
    round after the first, the previous round (workflow/runs.py previous_round)."""
    run = parse_run(wildcards.run)
    start = previous_round(run, config) or run.sft()
    return run_path(wildcards.dataset, start.name, wildcards.selection, name)


def sft_phase_file(wildcards, name):
    """A file of an SPRec round's SFT phase (its adapter, its reference log-probs), in the round's folder."""
    return run_path(wildcards.dataset, wildcards.run, wildcards.selection, "sft_phase", name)


def sft_phase_spec(wildcards):
    """The --spec of an SPRec round's SFT phase: the sft block for one epoch at the round's learning
    rate (the authors' SFT and DPO steps share theirs); its LoRA keys go unused (the start's stand)."""
    sft = {key: value for key, value in config["sft"].items() if key != "prompt"}
    return run_spec(wildcards, sft={**sft, "epochs": 1, "lr": run_block(parse_run(wildcards.run), config)["lr"]})


def preference_inputs(wildcards):
    """What a preference run reads beside the dataset and its selection: its start's adapter and,
    unless the run is reference-free (workflow/runs.py needs_reference: lpo4rec), its start's
    reference log-probs. An SPRec round with its SFT phase starts from, and is referenced against,
    that phase's adapter, and ranks its negatives by its start's log-probs (the previous model's)."""
    if sft_phase(parse_run(wildcards.run), config):
        return {"adapter": sft_phase_file(wildcards, "adapter"),
                "reference": sft_phase_file(wildcards, "reference_logprobs.parquet"),
                "negatives": start_file(wildcards, "reference_logprobs.parquet")}
    run = parse_run(wildcards.run)
    inputs = {"adapter": start_file(wildcards, "adapter")}
    if needs_reference(run, config):
        inputs["reference"] = start_file(wildcards, "reference_logprobs.parquet")
    if METHOD_DECLARATIONS[run.method].surrogate:  # napo's auxiliary recommender: scores, user vectors
        inputs.update(surrogate_tables(wildcards.dataset))
    return inputs


def preference_args(wildcards, input):
    """A params function: `--reference TABLE` when the run reads one, `--negatives TABLE` when its
    negatives are ranked by another, `--surrogate FOLDER` when it reads the surrogate (napo)."""
    args = [arg for name in ("reference", "negatives") if name in input.keys() for arg in (f"--{name}", input[name])]
    return args + surrogate_args(input)
