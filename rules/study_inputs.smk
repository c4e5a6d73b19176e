# The input functions and specs of rules/study.smk.


def study_points(name):
    """(labels, run) of every run of a study: each method at every combination of the grid
    (workflow/runs.py grid_point: a main run is reused, not retrained)."""
    study = config["studies"][name]
    grid = study["grid"]
    if study["x"] not in grid:
        raise WorkflowError(f"config key 'studies.{name}.x': {study['x']!r} is not a key of its grid")
    try:
        points = [grid_point(method, dict(zip(grid, values)), config)
                  for method in study["methods"] for values in itertools.product(*grid.values())]
        if study.get("reference"):
            # the reference method's run at each prompt and budget the grid visits
            shared = {tuple((axis, labels[axis]) for axis in ("prompt", "budget") if axis in grid)
                      for labels, _ in points}
            references = [grid_point(study["reference"], dict(point), config) for point in sorted(shared)]
            points += [({**labels, "reference": True}, run) for labels, run in references]
    except ValueError as exc:
        raise WorkflowError(f"config key 'studies.{name}.grid': {exc}") from exc
    return points


def study_seeds(name):
    """The training seeds of a study's runs: its `seeds`, else the config's one `seed`."""
    return list(dict.fromkeys(config["studies"][name].get("seeds") or [config["seed"]]))


def study_runs(name):
    """(labels, metrics path, training benchmark) of every run of a study at each of its seeds, on
    every dataset and the first selection strategy (the benchmark: its training job's seconds and
    memory, none for an untuned run)."""
    split = config["studies"][name]["split"]
    out = []
    for d in DATASETS:
        for s in SELECTIONS[:1]:
            for labels, run in study_points(name):
                trained = run.method != "base"  # an untuned run: one, at the config seed, no training job
                for seed in study_seeds(name) if trained else [config["seed"]]:
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


