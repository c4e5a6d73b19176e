# The input functions and specs of rules/selection.smk.


def effort_sft_run():
    """With `effort.adapter: sft`: (the sft run, the selection) whose adapter the effort is measured
    on, as the authors measure it on a LoRA trained on the data: the first sft run of `methods` at
    the config seed, on the first strategy that is not DEALRec's. The DEALRec selection (and every
    run trained on it) then waits for that training. None for any other `effort.adapter`."""
    if config["selection"]["dealrec"]["effort"]["adapter"] != "sft":
        return None
    plain = [s for s in SELECTIONS if s not in ("dealrec", "influence", "effort")]
    runs = [r for r in TRAINED_RUNS if r.method == "sft" and run_seed(r, config) == config["seed"]]
    if not plain or not runs:
        raise WorkflowError("config key 'selection.dealrec.effort.adapter': `sft` needs an sft run in `methods` and "
                            "a strategy that is not DEALRec's (random or all) to train it on")
    return runs[0], plain[0]


def effort_inputs(wildcards):
    """The base model, the dataset, and the sft adapter of `effort_sft_run` (when there is one)."""
    found = effort_sft_run()
    adapter = {"adapter": run_path(wildcards.dataset, found[0].name, found[1], "adapter")} if found else {}
    return {**adapter, "model": BASE_MODEL, **data(wildcards.dataset)}


def effort_spec(wildcards):
    """The LLM the effort is measured on: the base model with the sft block's LoRA and prompt, or
    the trained sft adapter (`effort_sft_run`) under its run's prompt."""
    lora = {k: config["sft"][k] for k in ("lora_r", "lora_alpha", "lora_dropout", "target_modules")}
    found = effort_sft_run()
    prompt = found[0].prompt if found else config["sft"]["prompt"]
    return spec({"llm": config["llm"], "sft": lora, "domain": domain(wildcards), "prompt": prompt,
                 "selection": {"dealrec": {"effort": config["selection"]["dealrec"]["effort"]}}})


def dealrec_inputs(wildcards):
    """The samples and the score tables a DEALRec strategy selects from."""
    scores = f"{RESULTS}/{wildcards.dataset}/selection/scores"
    inputs = data(wildcards.dataset, "samples")
    if wildcards.selection in ("dealrec", "influence"):
        inputs["influence"] = f"{scores}/influence.parquet"
    if wildcards.selection in ("dealrec", "effort"):
        inputs["effort"] = f"{scores}/effort.parquet"
    return inputs


def dealrec_score_args(wildcards, input):
    return " ".join(f"--{name} {shlex.quote(input[name])}" for name in ("influence", "effort") if name in input.keys())


def budget_inputs(wildcards):
    """The selection a -n subset is drawn from (and, for a DEALRec selection, its scored pool)."""
    folder = f"{RESULTS}/{wildcards.dataset}/selection"
    inputs = {"selection": f"{folder}/{wildcards.name}.parquet"}
    if wildcards.name in ("dealrec", "influence", "effort"):
        inputs["scores"] = f"{folder}/{wildcards.name}.scores.parquet"
    return inputs
