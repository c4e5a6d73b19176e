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


def study_runs(name):
    """(labels, metrics path) of every run of a study, on every dataset and the first selection strategy."""
    split = config["studies"][name]["split"]
    return [({**labels, "dataset": d, "selection": s}, run_metrics(d, run.name, s, split))
            for d in DATASETS for s in SELECTIONS[:1] for labels, run in study_points(name)]


def study_spec(wildcards):
    study = config["studies"][wildcards.study]
    runs = [{**labels, "path": path} for labels, path in study_runs(wildcards.study)]
    return spec({"name": wildcards.study, "x": study["x"], "split": study["split"], "protocols": study["protocols"],
                 "metrics": study["metrics"],
                 "bootstrap": config["summary"]["bootstrap"], "ci": config["summary"]["ci"], "runs": runs})


