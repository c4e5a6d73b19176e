# What the workflow makes: the targets of rule all (the Snakefile), by stage.


def all_targets():
    """Every output the config asks for: the data, the surrogate, the summary (every run's test
    metrics), the runs' metrics on the other splits of `evaluation.splits` (e.g. valid, to choose
    settings), explanations, studies and the report's figures."""
    splits = [run_metrics(d, r, s, split) for split in config["evaluation"]["splits"] if split != "test"
              for d in DATASETS for r, s in method_runs()]
    return (expand(f"{RESULTS}/{{dataset}}/data/samples.parquet", dataset=DATASETS)
            + expand(f"{RESULTS}/{{dataset}}/surrogate/metrics.parquet", dataset=DATASETS)
            + [f"{RESULTS}/summary.parquet", f"{RESULTS}/summary.md"] + splits + explanation_targets()
            + study_targets() + report_targets())


# Cross-domain transfer: the config's `transfer` list (workflow/transfer.py), checked here (errors name the entry)
try:
    TRANSFERS = transfers(config)
except ValueError as exc:
    raise WorkflowError(str(exc)) from exc


def transfer_targets():
    """The test metrics of every transferred run, on each selection it trains on."""
    return [f"{RESULTS}/{t.dataset}/transfer/{t.trained_on}/{t.run.name}/{s}/test/metrics.parquet"
            for t in TRANSFERS for s in run_selections(t.run)]


def explanation_targets():
    """Explanations of every trained run named by `explanations.methods` (a bare method: each of
    its runs) that `methods` trains, at the first training seed (`showcased`)."""
    wanted = config["explanations"]["methods"]
    return [run_path(d, r.name, s, f"explanations.{ext}") for d in DATASETS for r in TRAINED_RUNS
            if showcased(r, wanted) for s in run_selections(r) for ext in ("parquet", "html")]


def showcased(run, wanted):
    """Whether a list of runs or bare methods (`explanations.methods`) names the run: by its full
    name, or, at the first training seed, by its name without -s or its bare method."""
    return run.name in wanted or run in SHOWCASE_RUNS and (run._replace(seed=None).name in wanted or run.method in wanted)


def study_targets():
    return [f"{RESULTS}/studies/{name}.{ext}" for name, study in config["studies"].items() if study["enabled"]
            for ext in ("parquet", "md", "png")] + ([f"{RESULTS}/tuning/tuned.md"] if config["tuning"]["enabled"] else [])


REPORT = f"{RESULTS}/report"
RESOURCES_FIGURE = f"{REPORT}/resources.png"


def gate_targets():
    """iLoRA's gate showcase of every ilora run of `methods` that has a gate (not `uniform`), at the
    first training seed (SHOWCASE_RUNS)."""
    return [run_path(d, r.name, s, f"gates.{ext}") for d in DATASETS for r in SHOWCASE_RUNS
            if r.method == "ilora" and run_block(r, config)["gate"] != "uniform"
            for s in run_selections(r) for ext in ("parquet", "png")]


def report_targets():
    """The report's figures and tables; the resources figure comes last."""
    targets = [f"{REPORT}/summary.html", f"{REPORT}/metrics"] + gate_targets()
    targets += expand(f"{REPORT}/data/{{dataset}}.{{ext}}", dataset=DATASETS, ext=["html", "png"])
    if TRAINED_RUNS:
        targets += expand(f"{REPORT}/training/{{dataset}}.png", dataset=DATASETS)
    return targets + [RESOURCES_FIGURE]
