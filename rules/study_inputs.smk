# The input functions and specs of rules/study.smk.


def study_runs(name):
    """(labels, metrics path, training benchmark) of every run of a study at each of its seeds, on
    every dataset and the first selection strategy (the benchmark: its training job's seconds and
    memory, none for an untuned run)."""
    split = config["studies"][name]["split"]
    try:
        points = study_points(name, config)
    except ValueError as exc:
        raise WorkflowError(str(exc)) from exc
    out = []
    for d in DATASETS:
        for s in SELECTIONS[:1]:
            for labels, run in points:
                trained = run.method != "base"  # an untuned run: one, at the config seed, no training job
                for seed in study_seeds(name, config) if trained else [config["seed"]]:
                    seeded = at_seed(run, seed, config) if trained else run
                    train = benchmarked(run_path(d, seeded.name, s, "train", under=None)) if trained else None
                    out.append(({**labels, "dataset": d, "selection": s, "seed": seed},
                                run_metrics(d, seeded.name, s, split), train))
    return out


def study_spec(wildcards):
    study = config["studies"][wildcards.study]
    runs = [{**labels, "path": path, "benchmark": train} for labels, path, train in study_runs(wildcards.study)]
    return spec({"name": wildcards.study, "x": study["x"], "split": study["split"], "protocols": study["protocols"],
                 "metrics": study["metrics"],
                 "bootstrap": config["summary"]["bootstrap"], "ci": config["summary"]["ci"], "runs": runs})


