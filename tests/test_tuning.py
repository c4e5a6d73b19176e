"""Tuning (workflow/tuning.py, workflow/runs.py sampled_points): every method gets the same number
of trials, the default settings first; the selection is deterministic and gives ties to the earlier
trial; the overlay reproduces the selected run's name and settings; the tuned table's differences
match hand computation; and the workflow plans no test-split job before the selection."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow import runs, tuning
from workflow.config import load, validate
from workflow.runs import TUNING_PREFIX, block, config_runs, parse, sampled_points

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


@pytest.fixture()
def config():
    cfg = load()
    cfg["tuning"]["spaces"] = {"sft": {"lr": [1e-4, 5e-4, 1e-3], "epochs": [1, 2]},
                               "dmpo": {"lr": [1e-4, 5e-4], "beta": [0.1, 1.0], "k": [3, 7]}}
    cfg["studies"] = {k: v for k, v in cfg["studies"].items() if not k.startswith(TUNING_PREFIX)}
    return runs.with_tuning_studies(cfg)


def test_every_method_gets_the_same_trials_the_default_first_and_a_rerun_the_same(config):
    for method in ("sft", "dmpo"):
        found = tuning.trials(method, config)
        runs = [t["run"] for t in found["trials"]]
        assert len(runs) == config["tuning"]["trials"] == len(set(runs))
        assert found["default"] == f"{method}-open-n256" == runs[0] and found["trials"][0]["default"]
        assert not any(t["default"] for t in found["trials"][1:])
        assert tuning.trials(method, copy.deepcopy(config)) == found  # seeded: the same draw
        for t in found["trials"]:  # the name carries the settings
            settings = block(parse(t["run"]), config)
            assert {axis: settings[axis] for axis in t["settings"]} == t["settings"]


def test_a_space_with_fewer_runs_than_trials_is_an_error(config):
    config["studies"]["tuning-sft"]["grid"]["lr"] = [5e-4]
    config["studies"]["tuning-sft"]["grid"]["epochs"] = [1, 2]
    with pytest.raises(ValueError, match="2 distinct runs in the grid, fewer than trials"):
        sampled_points("tuning-sft", "sft", config)


def test_an_axis_the_method_does_not_take_is_an_error_naming_the_key():
    cfg = load()
    cfg["tuning"]["spaces"] = {"sft": {"dropout": [0.1]}}
    with pytest.raises(Exception, match="tuning.spaces"):
        validate(cfg)
    cfg = load()
    cfg["studies"] = {k: v for k, v in cfg["studies"].items() if not k.startswith(TUNING_PREFIX)}
    cfg["tuning"]["spaces"] = {"sft": {"beta": [0.1, 1.0]}}
    with pytest.raises(Exception, match="'tuning.spaces.sft.beta': sft does not take beta"):
        validate(cfg)


def test_tuning_studies_are_on_the_validation_split_at_the_tuning_budget_and_seeds(config):
    for method in ("sft", "dmpo"):
        study = config["studies"][f"tuning-{method}"]
        assert study["split"] == "valid" and study["grid"]["budget"] == [256]
        assert study["seeds"] == [42, 43, 44] and study["trials"] == 4
    clash = copy.deepcopy(config)
    clash["studies"]["tuning-sft"] = {**clash["studies"]["tuning-sft"], "trials": 2}
    with pytest.raises(ValueError, match="studies.tuning-sft"):
        runs.with_tuning_studies(clash)


def study_table(method, runs_values, labels):
    """A study table as workflow/study.py writes it: one auc row per trial."""
    rows = []
    for (run, value), lab in zip(runs_values, labels, strict=True):
        rows.append({"dataset": "toy", "selection": "random", **lab, "protocol": "likelihood", "metric": "auc",
                     "is_reference": False, "value": value, "n": 10, "ci_low": value - 0.1, "ci_high": value + 0.1,
                     "n_seeds": 3})
    return pd.DataFrame(rows)


def test_selection_picks_the_best_and_gives_ties_to_the_earlier_trial(config, tmp_path):
    found = tuning.trials("sft", config)
    labels = [t["labels"] for t in found["trials"]]
    runs = [t["run"] for t in found["trials"]]
    for values, expected in (([0.5, 0.7, 0.6, 0.7], 1), ([0.8, 0.7, 0.8, 0.1], 0), ([0.1, 0.2, 0.3, 0.9], 3)):
        table = study_table("sft", list(zip(runs, values)), labels)
        picked = tuning.selection_table(table, "sft", found["trials"], "auc", "likelihood")
        assert picked["selected"].tolist() == [i == expected for i in range(4)]
        assert picked["is_default"].tolist() == [True, False, False, False]
        # deterministic: shuffled rows give the same selection
        again = tuning.selection_table(table.sample(frac=1, random_state=1), "sft", found["trials"], "auc", "likelihood")
        assert again.equals(picked)


def test_select_writes_the_table_and_an_overlay_that_reruns_the_selected_runs(config, tmp_path):
    specs = {}
    for method, values in (("sft", [0.5, 0.7, 0.6, 0.65]), ("dmpo", [0.9, 0.8, 0.7, 0.6])):
        found = tuning.trials(method, config)
        path = tmp_path / f"tuning-{method}.parquet"
        study_table(method, list(zip([t["run"] for t in found["trials"]], values)),
                    [t["labels"] for t in found["trials"]]).to_parquet(path)
        specs[method] = (found, path)
    # SASRec's trials: per-sample validation AUC per seed; the third trial best on the seeds' mean
    config["tuning"]["sasrec"] = {"hidden_size": [32, 64], "dropout": [0.2, 0.5]}
    sasrec = tuning.sasrec_trials(config)
    assert sasrec["default"] == "hidden_size64-dropout0.2" == sasrec["trials"][0]["run"]
    sasrec_values = {t["run"]: [0.5, 0.6, 0.9, 0.7][i] for i, t in enumerate(sasrec["trials"])}
    for name, value in sasrec_values.items():
        for seed in config["tuning"]["seeds"]:
            folder = tmp_path / "sasrec" / name / f"s{seed}"
            folder.mkdir(parents=True)
            metrics_file(folder / "valid.parquet", "sasrec", [value + 0.01 * (seed - 43)] * 4, split="valid")
    spec = tuning.selection_spec(config, lambda name: str(tmp_path / f"{name}.parquet"),
                                 lambda trial, seed, file: str(tmp_path / "sasrec" / trial / f"s{seed}" / file))
    out = subprocess.run([sys.executable, "-m", "workflow.tuning", "select", "--spec", json.dumps(spec),
                          "--out-parquet", str(tmp_path / "selected.parquet"),
                          "--out-overlay", str(tmp_path / "tuned.yaml")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    selected = pd.read_parquet(tmp_path / "selected.parquet")
    sft_best = specs["sft"][0]["trials"][1]["run"]
    sasrec_best = sasrec["trials"][2]["run"]
    assert selected.loc[selected["selected"], "run"].tolist() == [sft_best, "dmpo-open-n256", sasrec_best]
    picked = selected[selected["run"] == sasrec_best].iloc[0]
    assert picked["value"] == pytest.approx(0.9) and picked["n_seeds"] == 3  # the seeds' mean
    overlay = yaml.safe_load((tmp_path / "tuned.yaml").read_text())
    assert overlay["surrogate"] == sasrec["trials"][2]["settings"]
    assert overlay["seeds"] == [42, 43, 44]
    # the config's methods with sft's default run swapped for its selected run; dmpo kept its default
    assert overlay["methods"] == ["base", sft_best, "dmpo-open-n256", "llara-open-n256", "soft-open-n256"]
    rerun = load()
    rerun.update(overlay)
    names = {r.name for r in config_runs(validate(rerun))}
    assert sft_best in names and "sft-open-n256" not in names and "dmpo-open-n256" in names
    settings = json.loads(selected.loc[selected["run"] == sft_best, "settings"].iloc[0])
    assert {k: block(parse(sft_best), rerun)[k] for k in settings} == settings


def metrics_file(path, method, auc, split="test"):
    n = len(auc)
    pd.DataFrame({"dataset": "toy", "method": method, "selection": "random", "protocol": "likelihood",
                  "split": split, "sample_id": [f"s{i}" for i in range(n)], "user_id": [f"u{i}" for i in range(n)],
                  "metric": "auc", "value": np.asarray(auc, float)}).to_parquet(path)
    return str(path)


def test_tuned_table_matches_hand_computed_differences_and_flags_changed_orderings(tmp_path):
    auc = {("random", "sft", "default"): [0.5, 0.6, 0.7, 0.8], ("random", "sft", "tuned"): [0.7, 0.8, 0.7, 0.9],
           ("random", "dmpo", "default"): [0.6, 0.7, 0.8, 0.9], ("random", "dmpo", "tuned"): [0.6, 0.7, 0.8, 0.9],
           ("dealrec", "sft", "default"): [0.6, 0.6, 0.7, 0.8], ("dealrec", "sft", "tuned"): [0.7, 0.8, 0.8, 0.9]}
    runs = [{"dataset": "toy", "selection": s, "method": m, "phase": p,
             "path": metrics_file(tmp_path / f"{s}-{m}-{p}.parquet", f"{m}-{p}", v)} for (s, m, p), v in auc.items()]
    frames = tuning.phase_frames(runs, "likelihood", ["auc"])
    claims_asked = [["dmpo", "sft"], ["sft@dealrec", "sft@random"], ["soft", "sft"]]  # soft: not tuned, left out
    methods, claims = tuning.tuned_tables(frames, claims_asked, "random", 200, 0.95, 0)
    sft = methods[(methods["method"] == "sft") & (methods["selection"] == "random")].iloc[0]
    assert sft["default"] == pytest.approx(0.65) and sft["tuned"] == pytest.approx(0.775)
    assert sft["delta"] == pytest.approx(0.125)
    assert list(claims["claim"]) == ["dmpo > sft", "sft@dealrec > sft@random"]
    assert tuning.left_out(claims_asked, claims) == ["soft > sft"]  # the table names what it leaves out
    assert tuning.left_out(claims_asked, claims.iloc[:0]) == ["dmpo > sft", "sft@dealrec > sft@random", "soft > sft"]
    claim = claims.iloc[0]
    assert claim["default"] == pytest.approx(0.1)
    assert claim["tuned"] == pytest.approx(-0.025)
    assert claim["changed"]  # dmpo above sft at the defaults, below once sft is tuned
    dealrec = claims.iloc[1]  # the same test samples under two selections: (0.1 + 0 + 0 + 0) / 4, then 0.1 / 4
    assert dealrec["default"] == pytest.approx(0.025) and dealrec["tuned"] == pytest.approx(0.025)
    # a bare method is read on the strategy given, whatever order the frames sort in
    _, on_dealrec = tuning.tuned_tables(frames, [["dmpo", "sft"]], "dealrec", 200, 0.95, 0)
    assert on_dealrec.empty  # dmpo was not run on dealrec
    _, on_dealrec = tuning.tuned_tables(frames, [["sft", "sft@random"]], "dealrec", 200, 0.95, 0)
    assert on_dealrec.iloc[0]["default"] == pytest.approx(0.025)


def test_a_lora_rank_space_gives_named_trials_at_that_rank(config):
    config["tuning"]["spaces"] = {"llara": {"lora_r": [4, 8, 16], "lr": [5e-4, 1e-3]}}
    config["studies"] = {k: v for k, v in config["studies"].items() if not k.startswith(TUNING_PREFIX)}
    found = tuning.trials("llara", runs.with_tuning_studies(config))
    assert found["trials"][0]["run"] == found["default"] == "llara-open-n256"  # rank 8, lr 5e-4: the block's
    for trial in found["trials"][1:]:
        run = parse(trial["run"])
        assert block(run, config)["lora_r"] == trial["settings"]["lora_r"]
        assert (run.lora_r is None) == (trial["settings"]["lora_r"] == config["llara"]["lora_r"])


def test_a_claim_naming_an_unknown_selection_strategy_is_an_error():
    raw = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    raw["tuning"]["claims"] = [["sft@dealrek", "sft@random"]]
    with pytest.raises(ValueError, match=r"config key 'tuning\.claims\.0\.0': 'sft@dealrek' does not match"):
        validate(copy.deepcopy(raw))
    raw["tuning"]["claims"] = [["sft@dealrec", "sft@random"], ["dmpo", "sft"]]
    assert validate(raw)["tuning"]["claims"] == [["sft@dealrec", "sft@random"], ["dmpo", "sft"]]


def test_ordering_changed():
    assert tuning.ordering_changed((0.1, 0.05, 0.15), (-0.1, -0.15, -0.05))
    assert tuning.ordering_changed((0.1, 0.05, 0.15), (0.1, -0.05, 0.25))  # no longer above zero
    assert not tuning.ordering_changed((0.1, 0.05, 0.15), (0.2, 0.1, 0.3))


def test_no_trial_reads_the_test_split(tmp_path):
    """The dry run up to the selection plans validation-split evaluations only."""
    out = subprocess.run([str(SNAKEMAKE), "-n", "--nolock", "--cores", "2", "--config",
                          f"results={tmp_path}/results", "--", f"{tmp_path}/results/tuning/selected.parquet"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    splits = re.findall(r"wildcards: dataset=[^,]+, run=[^,]+, selection=[^,]+, split=(\w+)", out.stdout)
    assert splits and set(splits) == {"valid"}
    assert "/test/metrics.parquet" not in out.stdout
    assert "checkpoint tuning_selection:" in out.stdout and "rule study:" in out.stdout


def test_the_schema_lists_the_run_axes_and_methods_a_space_may_take():
    from workflow.methods import METHODS
    from workflow.runs import GRID_AXES

    from workflow.config import read_schema

    schema = read_schema()
    spaces = schema["properties"]["tuning"]["properties"]["spaces"]
    assert spaces["additionalProperties"]["propertyNames"] == {"$ref": "#/$defs/space_axis"}
    assert schema["$defs"]["space_axis"]["enum"] == [a.name for a in GRID_AXES if a.block]
    assert spaces["propertyNames"] == {"$ref": "#/$defs/method"} and schema["$defs"]["method"]["enum"] == list(METHODS)


def test_the_tuning_all_overlay_covers_every_claim_and_leaves_the_default_trials_alone():
    """config/tuning-all.yaml merged into config.yaml (as --configfile merges): every method a claim
    names gets a space and the same number of trials; the methods config.yaml tunes keep their trials."""
    from snakemake.utils import update_config

    base = load()
    merged = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(merged, yaml.safe_load((ROOT / "config" / "tuning-all.yaml").read_text()))
    merged = runs.with_tuning_studies(validate(merged))
    claimed = {side.partition("@")[0] for claim in merged["tuning"]["claims"] for side in claim}
    assert claimed <= set(merged["tuning"]["spaces"])
    assert set(base["tuning"]["spaces"]) < set(merged["tuning"]["spaces"])
    base = runs.with_tuning_studies(base)
    for method in merged["tuning"]["spaces"]:
        found = tuning.trials(method, merged)
        assert len(found["trials"]) == merged["tuning"]["trials"] and found["trials"][0]["run"] == found["default"]
        if method in base["tuning"]["spaces"]:
            assert found == tuning.trials(method, base)


def test_sasrec_trial_names_keep_their_spelling():
    """A SASRec trial's folder (results/{dataset}/tuning/sasrec/<trial>/) is named by its settings: the
    learning rate as run names spell it, every other value by %g, so stored trials keep their folders."""
    name = tuning.sasrec_trial_name({"hidden_size": 64, "dropout": 0.2, "lr": 3e-3})
    assert name == "hidden_size64-dropout0.2-lr3e-3"
    assert (tuning.sasrec_trial_name({"hidden_size": 32, "dropout": 0.5, "lr": 0.001, "batch_size": 512.0})
            == "hidden_size32-dropout0.5-lr1e-3-batch_size512")
