# The input functions and specs of rules/eval.smk.


def run_protocols(run, split):
    """Protocols a run is evaluated with on a split: `evaluation.protocols` for a run of `methods`
    on one of `evaluation.splits`; otherwise (a study's run, or a study's split) the union of the
    studies' protocols on that split. Only those the run's prompt supports."""
    if run.name in {r.name for r in RUNS} and split in config["evaluation"]["splits"]:
        wanted = config["evaluation"]["protocols"]
    else:
        wanted = [p for study in config["studies"].values() if study["split"] == split for p in study["protocols"]]
    return run.protocols(list(dict.fromkeys(wanted)) or ["likelihood"])


def evaluation_spec(wildcards):
    """The evaluation of one run on one split (see run_protocols)."""
    protocols = run_protocols(parse_run(wildcards.run), wildcards.split)
    return run_spec(wildcards, evaluation={**config["evaluation"], "splits": [wildcards.split], "protocols": protocols})


def evaluation_inputs(wildcards):
    """What evaluating a run needs: the base model and the dataset; the run's adapter unless it is the
    base model (for a transferred run, the one trained on {trained_on}); the surrogate tables for a
    llara or ilora run; the stored inputs its protocols read (workflow/protocol_table.py `reads`)."""
    run = parse_run(wildcards.run)
    inputs = {"model": BASE_MODEL, **data(wildcards.dataset, "samples"), "item_table": run_items(wildcards)}
    if run.method != "base":
        trained_on = wildcards.trained_on if "trained_on" in wildcards.keys() else wildcards.dataset
        inputs["adapter"] = run_path(trained_on, wildcards.run, wildcards.selection, "adapter")
    if run.method in HYBRID:
        inputs |= surrogate_tables(wildcards.dataset)
    for need in protocol_reads(run_protocols(run, wildcards.split)):
        inputs[need] = f"{RESULTS}/{wildcards.dataset}/llm/{need}.parquet"
    return inputs


def summary_metrics(wildcards):
    """Every per-sample metrics table: the baselines', the surrogate's, each LLM run's and each
    transferred run's (test split)."""
    return baseline_metrics() + [run_metrics(d, r, s) for d in DATASETS for r, s in method_runs()] + transfer_targets()
