"""Tuning: every method searched on the validation split with the same number of trials, the best
trial chosen by one declared metric, and the test split read for the chosen runs only.

Built on the one study mechanism (workflow/study.py): each method of `tuning.spaces` becomes the
study `tuning-<method>` (workflow/runs.py `tuning_studies`), whose grid is the method's space at the
tuning's prompt (the method block's), `budget` and `seeds`, with `trials` of its combinations
(workflow/runs.py `sampled_points`: the default settings' point first where the space holds it, then a
seeded draw), evaluated on the validation split under `protocol`. Every trial is a named run
(`dmpo-open-b0.1-n256`), so a trial is trained once, whichever study or config asks for it.

    python -m workflow.tuning select --spec '{"metric": "auc", "protocol": "likelihood",
        "methods": {"dmpo": {"study": "results/studies/tuning-dmpo.parquet", "trials": [{"run": ...,
        "labels": {...}, "settings": {...}}, ...]}, ...}, "entries": {...}, "seeds": [...]}' \\
        --out-parquet results/tuning/selected.parquet --out-overlay results/tuning/tuned.yaml
    python -m workflow.tuning table --spec '{"metrics": [...], "protocol": ..., "claims": [...],
        "selection": "random", "bootstrap": 1000, "ci": 0.95,
        "runs": [{"dataset", "selection", "method", "phase", "path"}, ...]}' \\
        --selected results/tuning/selected.parquet --seed 42 --out-parquet ... --out-md ...

`select` writes every trial's validation statistic (pooled over seeds, with its interval) and marks
each method's best: the highest value; a tie (equal to 1e-12) goes to the earlier trial, so the
default settings win ties. It also writes the config overlay: the config's `methods` list with each
tuned method's default run replaced by its selected run, and the tuning's seeds, so
`snakemake --configfile results/tuning/tuned.yaml` reruns the comparison at the tuned settings
(the run names carry the settings). A preference or SOFT trial starts from the default sft run of
its prompt and budget (workflow/runs.py `Run.sft`), tuned or not: each method's own settings are
searched, its start is shared.

`table` reads the default and the selected run of every tuned method on the test split (pooled over
seeds; the methods of `selection.compare_methods` under every selection strategy): per method, its
test metrics at both settings and the paired difference; per claim ([better, worse] pairs, each a
method on the first strategy or `method@strategy`, e.g. `sft@dealrec` against `sft@random`), the
paired difference at the default settings and at the tuned ones, and whether the ordering changed
(the sign of the point estimate, or an interval that excluded zero and no longer does, or the
reverse).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from workflow import cli
from workflow.io import atomic_path, write_parquet
from workflow.runs import (at_seed, draw_trials, grid_point, parse, resolve, run_selections, sampled_points,
                           sasrec_candidates, sasrec_trial_name, tuning_seeds, tuning_study)
from workflow.study import LABELS, normal_key, run_frames
from workflow.summary import estimate, paired_delta

log = logging.getLogger(__name__)

TIE = 1e-12  # validation statistics this close are a tie: the earlier trial wins


def claim_label(better: str, worse: str) -> str:
    """A claim as the tuned table names it: `dmpo > sft`."""
    return f"{better} > {worse}"


def claim_side(side: str, selection: str) -> tuple[str, str]:
    """(selection, method) of one side of a claim: `method` (on `selection`, the first strategy) or
    `method@strategy`."""
    method, _, strategy = side.partition("@")
    return strategy or selection, method


def trials(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """A method's default run and its trials in order (run name, the study's labels, its settings on
    the space's axes, whether it is the default run)."""
    name = tuning_study(method)
    space = config["tuning"]["spaces"][method]
    fixed = {"prompt": config[method]["prompt"], "budget": config["tuning"]["budget"]}
    default = grid_point(method, fixed, config)[1].name
    out = []
    for point in sampled_points(name, method, config):
        labels, run = grid_point(method, point, config)
        out.append({"run": run.name, "labels": labels, "settings": {axis: labels[axis] for axis in space},
                    "default": run.name == default})
    return {"default": default, "trials": out}


def sasrec_trials(config: dict[str, Any]) -> dict[str, Any]:
    """SASRec's default trial and its trials (name, settings, whether it is the default), drawn as
    the LLM methods' are (workflow/runs.py draw_trials) from `tuning.sasrec`; none without a space."""
    space = config["tuning"]["sasrec"]
    if not space:
        return {"default": None, "trials": []}
    default = sasrec_trial_name({key: config["surrogate"][key] for key in space})
    names = sasrec_candidates(space)
    drawn = draw_trials(list(names), default, config["tuning"]["trials"], "tuning/sasrec", config["seed"])
    return {"default": default, "trials": [{"run": name, "settings": names[name], "default": name == default}
                                           for name in drawn]}


def sasrec_trial_settings(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The surrogate block of SASRec trial `name`."""
    for trial in sasrec_trials(config)["trials"]:
        if trial["run"] == name:
            return {**config["surrogate"], **trial["settings"]}
    raise ValueError(f"{name!r} is not a SASRec trial of tuning.sasrec")


def entries(config: dict[str, Any]) -> dict[str, list[str]]:
    """Each entry of the config's `methods` list and the names of the runs it stands for."""
    return {entry: [run.name for run in resolve(entry, config)] for entry in config["methods"]}


def selection_spec(config: dict[str, Any], study_path, sasrec_path) -> dict[str, Any]:
    """`select`'s spec; `study_path(name)`: the Parquet of study `name`; `sasrec_path(trial, seed,
    file)`: a SASRec trial's file on the (one) dataset."""
    tuning = config["tuning"]
    seeds = tuning_seeds(config)
    sasrec = sasrec_trials(config)
    for trial in sasrec["trials"]:
        trial["paths"] = [sasrec_path(trial["run"], seed, "valid.parquet") for seed in seeds]
    return {"metric": tuning["metric"], "protocol": tuning["protocol"], "entries": entries(config), "seeds": seeds,
            "bootstrap": config["summary"]["bootstrap"], "ci": config["summary"]["ci"], "seed": config["seed"],
            "methods": {m: {"study": study_path(tuning_study(m)), **trials(m, config)} for m in tuning["spaces"]},
            "sasrec": sasrec}


def table_runs(config: dict[str, Any], selected: pd.DataFrame, datasets: Sequence[str], metrics_path,
               sasrec_path) -> list[dict[str, Any]]:
    """The runs `table` reads: each tuned method's default and selected run at every tuning seed, on
    the test split (`metrics_path(dataset, run name, selection)`: the first selection strategy, every
    one for `selection.compare_methods`; SASRec's trials: `sasrec_path(trial, seed, "test.parquet")`),
    from `select`'s table."""
    seeds = tuning_seeds(config)
    selection = config["selection"]["strategies"][0]  # SASRec's rows
    runs = []
    for method, rows in selected.groupby("method", sort=False):
        names = {"default": rows["default_run"].iloc[0], "tuned": rows.loc[rows["selected"], "run"].iloc[0]}
        for phase, name in names.items():
            for seed in seeds:
                if method == "sasrec":
                    runs.append({"dataset": datasets[0], "selection": selection, "method": method, "phase": phase,
                                 "path": sasrec_path(name, seed, "test.parquet")})
                    continue
                run = at_seed(parse(name), seed, config).name
                runs += [{"dataset": d, "selection": s, "method": method, "phase": phase,
                          "path": metrics_path(d, run, s)}
                         for d in datasets for s in run_selections(config, parse(run))]
    return runs


def table_spec(config: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`table`'s spec: the tuning's metrics, protocol and claims, the summary's bootstrap, and `runs`
    (table_runs)."""
    tuning = config["tuning"]
    return {"metrics": tuning["metrics"], "protocol": tuning["protocol"], "claims": tuning["claims"], "runs": runs,
            "selection": config["selection"]["strategies"][0], "bootstrap": config["summary"]["bootstrap"],
            "ci": config["summary"]["ci"]}


def study_stats(study: pd.DataFrame, method: str, method_trials: Sequence[dict[str, Any]], metric: str,
                protocol: str) -> list[dict[str, Any]]:
    """Each trial's validation statistic (value, interval, samples, seeds) from its study's table."""
    rows = study[(study["method"] == method) & (study["protocol"] == protocol) & (study["metric"] == metric)
                 & ~study["is_reference"]]
    if rows[["dataset", "selection"]].drop_duplicates().shape[0] > 1:
        raise ValueError(f"tuning of {method}: its study holds several datasets or selections; tuning selects on one")
    run_labels = list(LABELS[2:])  # method and the axes: what tells a study's runs apart on one dataset
    by_labels = {normal_key(tuple(r[n] for n in run_labels)): r for _, r in rows.iterrows()}
    out = []
    for trial in method_trials:
        row = by_labels.get(normal_key(tuple(trial["labels"].get(n) for n in run_labels)))
        if row is None:
            raise ValueError(f"tuning of {method}: trial {trial['run']} has no {protocol} {metric} row in its study")
        out.append({"value": float(row["value"]), "ci_low": float(row["ci_low"]), "ci_high": float(row["ci_high"]),
                    "n": int(row["n"]), "n_seeds": int(row["n_seeds"]) if pd.notna(row["n_seeds"]) else 1})
    return out


def sasrec_stats(sasrec: Sequence[dict[str, Any]], metric: str, protocol: str, resamples: int, level: float,
                 seed: int) -> list[dict[str, Any]]:
    """Each SASRec trial's validation statistic, its seeds' per-sample values pooled as a study pools them."""
    out = []
    for trial in sasrec:
        (frame,) = run_frames([{"path": path} for path in trial["paths"]], "valid", [protocol], [metric],
                              labels=lambda run: ()).values()
        value, low, high = estimate(metric, frame, resamples, level, seed)
        out.append({"value": value, "ci_low": low, "ci_high": high, "n": len(frame), "n_seeds": len(trial["paths"])})
    return out


def trial_table(method: str, method_trials: Sequence[dict[str, Any]], stats: Sequence[dict[str, Any]], metric: str,
                protocol: str) -> pd.DataFrame:
    """Every trial of `method` with its statistic, the best marked: the highest value, a tie (within
    TIE) going to the earlier trial."""
    frame = pd.DataFrame([{"method": method, "trial": i, "run": trial["run"], "is_default": bool(trial["default"]),
                           "settings": json.dumps(trial["settings"], sort_keys=True), "protocol": protocol,
                           "metric": metric, **stat} for i, (trial, stat) in enumerate(zip(method_trials, stats,
                                                                                            strict=True))])
    frame["selected"] = False
    frame.loc[(frame["value"] >= frame["value"].max() - TIE).idxmax(), "selected"] = True  # the first of the ties
    return frame


def selection_table(study: pd.DataFrame, method: str, method_trials: Sequence[dict[str, Any]], metric: str,
                    protocol: str) -> pd.DataFrame:
    """Every trial of an LLM method with its validation statistic from its study table, the best marked."""
    return trial_table(method, method_trials, study_stats(study, method, method_trials, metric, protocol), metric,
                       protocol)


def overlay(entry_runs: dict[str, list[str]], chosen: dict[str, tuple[str, str]], seeds: Sequence[int]) -> dict:
    """The config overlay: every `methods` entry (as its runs' names: `entry_runs`), a tuned method's
    default run replaced by its selected run (`chosen`: method -> (default run, selected run))."""
    swap = {default: selected for default, selected in chosen.values()}
    methods = []
    for entry, names in entry_runs.items():
        methods += [swap.get(name, name) for name in names] if any(n in swap for n in names) else [entry]
    return {"methods": list(dict.fromkeys(methods)), "seeds": list(seeds)}


def select(spec: dict[str, Any]) -> tuple[pd.DataFrame, dict]:
    """The selection table of every tuned method and the overlay (`select` of the module docstring)."""
    metric, protocol = spec["metric"], spec["protocol"]
    tables = [selection_table(pd.read_parquet(tuned["study"]), method, tuned["trials"], metric, protocol)
              .assign(default_run=tuned["default"]) for method, tuned in spec["methods"].items()]
    sasrec = spec.get("sasrec") or {"trials": []}
    if sasrec["trials"]:
        stats = sasrec_stats(sasrec["trials"], metric, protocol, int(spec["bootstrap"]), float(spec["ci"]),
                             int(spec["seed"]))
        tables.append(trial_table("sasrec", sasrec["trials"], stats, metric, protocol)
                      .assign(default_run=sasrec["default"]))
    table = pd.concat(tables, ignore_index=True)
    chosen = {}
    for method, rows in table.groupby("method", sort=False):
        best = rows[rows["selected"]].iloc[0]
        chosen[method] = (rows["default_run"].iloc[0], best["run"])
        log.info("%s: %s selected (%s %s %.4f over %d trials; default %s)", method, best["run"], protocol, metric,
                 best["value"], len(rows), chosen[method][0])
    tuned = overlay(spec["entries"], {m: c for m, c in chosen.items() if m != "sasrec"}, spec["seeds"])
    if "sasrec" in chosen:
        best = table[(table["method"] == "sasrec") & table["selected"]].iloc[0]
        tuned["surrogate"] = json.loads(best["settings"])
    return table, tuned


def phase_frames(runs: Sequence[dict[str, Any]], protocol: str, metrics: Sequence[str]) -> dict[tuple, pd.DataFrame]:
    """(dataset, selection, method, phase, metric) -> per-sample test frame, pooled over seeds."""
    frames = run_frames(runs, "test", [protocol], metrics,
                        labels=lambda run: (run["dataset"], run["selection"], run["method"], run["phase"]))
    return {(*key[:4], key[-1]): frame for key, frame in frames.items()}


def tuned_tables(frames: dict[tuple, pd.DataFrame], claims: Sequence[Sequence[str]], selection: str, resamples: int,
                 level: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(methods, claims): each method's test statistic at the default and tuned settings with the
    paired difference; each claim's paired difference at both (a bare method on `selection`), and
    whether its ordering changed. A claim missing either side's runs is left out."""
    rows = []
    for (dataset, strategy, method, phase, metric), frame in sorted(frames.items()):
        if phase != "tuned":
            continue
        default = frames[(dataset, strategy, method, "default", metric)]
        rows.append((dataset, strategy, method, metric, *estimate(metric, default, resamples, level, seed),
                     *estimate(metric, frame, resamples, level, seed),
                     *paired_delta(metric, frame, default, resamples, level, seed)))
    methods = pd.DataFrame(rows, columns=["dataset", "selection", "method", "metric", "default", "default_low",
                                          "default_high", "tuned", "tuned_low", "tuned_high", "delta", "delta_low",
                                          "delta_high"])
    rows = []
    metrics = sorted({key[4] for key in frames})
    for dataset in sorted({key[0] for key in frames}):
        for better, worse in claims:
            sides = [claim_side(side, selection) for side in (better, worse)]
            for metric in metrics:
                at = {phase: [frames.get((dataset, *side, phase, metric)) for side in sides]
                      for phase in ("default", "tuned")}
                if any(f is None for pair in at.values() for f in pair):
                    continue
                before = paired_delta(metric, *at["default"], resamples, level, seed)
                after = paired_delta(metric, *at["tuned"], resamples, level, seed)
                rows.append((dataset, claim_label(better, worse), metric, *before, *after,
                             ordering_changed(before, after)))
    claims_table = pd.DataFrame(rows, columns=["dataset", "claim", "metric", "default", "default_low", "default_high",
                                               "tuned", "tuned_low", "tuned_high", "changed"])
    return methods, claims_table


def verdict(delta: Sequence[float]) -> int:
    """+1 when the interval lies above zero, -1 below, 0 when it holds zero."""
    _, low, high = delta
    return 1 if low > 0 else -1 if high < 0 else 0


def ordering_changed(before: Sequence[float], after: Sequence[float]) -> bool:
    """Whether a claim's ordering changed: its point estimate changed sign, or its interval's verdict
    (above, holding or below zero) changed."""
    return bool(np.sign(before[0]) != np.sign(after[0]) or verdict(before) != verdict(after))


def interval_text(value: float, low: float, high: float, signed: bool = False) -> str:
    fmt = "+.3f" if signed else ".3f"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def left_out(asked: Sequence[Sequence[str]], claims: pd.DataFrame) -> list[str]:
    """The claims asked for that the claims table lacks (a side not tuned, or without runs)."""
    shown = set(claims["claim"])
    return [claim for claim in dict.fromkeys(claim_label(*pair) for pair in asked) if claim not in shown]


def markdown(selected: pd.DataFrame, methods: pd.DataFrame, claims: pd.DataFrame, level: float,
             resamples: int, missing: Sequence[str] = ()) -> str:
    picked = selected[selected["selected"]].set_index("method")
    defaults = selected[selected["is_default"]].set_index("method")
    metric, protocol = picked["metric"].iloc[0], picked["protocol"].iloc[0]
    n_trials = selected.groupby("method").size()
    lines = ["# Tuned comparison", "",
             f"Each method searched over {int(n_trials.max())} trials on the validation split, selected by "
             f"{protocol} {metric} (pooled over {int(picked['n_seeds'].max())} seeds; ties to the earlier trial, "
             "the default settings first); the test split read for the default and the selected run only. "
             f"Point estimate [{level:.0%} bootstrap interval, {resamples} resamples]; Δ paired.", "",
             "## Settings", "", f"| method | default run | tuned run (settings) | valid {metric} default | "
             f"valid {metric} tuned |", "|---|---|---|---|---|"]
    for method, row in picked.iterrows():
        default = (interval_text(*defaults.loc[method, ["value", "ci_low", "ci_high"]]) if method in defaults.index
                   else "not a trial")
        lines.append(f"| {method} | {row['default_run']} | {row['run']} {row['settings']} | {default} | "
                     f"{interval_text(row['value'], row['ci_low'], row['ci_high'])} |")
    lines += ["", "## Test split", "",
              "| dataset | selection | method | metric | default | tuned | Δ tuned − default |",
              "|---|---|---|---|---|---|---|"]
    for r in methods.itertuples():
        lines.append(f"| {r.dataset} | {r.selection} | {r.method} | {r.metric} | "
                     f"{interval_text(r.default, r.default_low, r.default_high)}"
                     f" | {interval_text(r.tuned, r.tuned_low, r.tuned_high)} | "
                     f"{interval_text(r.delta, r.delta_low, r.delta_high, signed=True)} |")
    if len(claims):
        lines += ["", "## Claims before and after tuning (test split)", "",
                  "| dataset | claim | metric | Δ at default | Δ tuned | ordering changed |",
                  "|---|---|---|---|---|---|"]
        for r in claims.itertuples():
            lines.append(f"| {r.dataset} | {r.claim} | {r.metric} | "
                         f"{interval_text(r.default, r.default_low, r.default_high, signed=True)} | "
                         f"{interval_text(r.tuned, r.tuned_low, r.tuned_high, signed=True)} | "
                         f"{'yes' if r.changed else 'no'} |")
    if missing:
        lines += ["", "Claims left out (a side not among the tuned methods, or without its runs): "
                  f"{', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = cli.parser("Tuning: select each method's best validation trial; the tuned comparison on test.")
    p.add_argument("step", choices=["select", "table"])
    p.add_argument("--spec", type=cli.json_arg, required=True, help="JSON (see the module docstring)")
    p.add_argument("--selected", help="select's Parquet (table)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (table)")
    p.add_argument("--out-parquet", required=True)
    p.add_argument("--out-overlay", help="the config overlay (select)")
    p.add_argument("--out-md", help="the tuned table (table)")

    def run(args):
        spec = args.spec
        if args.step == "select":
            table, tuned = select(spec)
            header = ("# The tuned comparison (workflow/tuning.py): each tuned method's selected run in "
                      "`methods`.\n# snakemake --configfile <this file>\n")
            with atomic_path(args.out_overlay, suffix=".yaml") as tmp:
                tmp.write_text(header + yaml.safe_dump(tuned, sort_keys=False))
            write_parquet(table, args.out_parquet)
            return
        selected = pd.read_parquet(args.selected)
        frames = phase_frames(spec["runs"], spec["protocol"], spec["metrics"])
        methods, claims = tuned_tables(frames, spec["claims"], spec["selection"], int(spec["bootstrap"]),
                                       float(spec["ci"]), args.seed)
        write_parquet(pd.concat([methods.assign(table="methods"), claims.assign(table="claims")], ignore_index=True),
                      args.out_parquet)
        with atomic_path(args.out_md, suffix=".md") as tmp:
            tmp.write_text(markdown(selected, methods, claims, float(spec["ci"]), int(spec["bootstrap"]),
                                    left_out(spec["claims"], claims)))

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
