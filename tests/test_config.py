"""Config schema: defaults, errors that name the key, and the workflow's static checks."""
from __future__ import annotations

import os
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow import config as cfg, runs
from workflow.methods import CURRICULA, NEGATIVES, QUANTIZATION

ROOT = Path(__file__).resolve().parent.parent


def _default():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_config_validates_and_fills_defaults():
    config = cfg.validate(_default())
    assert config["prepare"]["min_history"] == 1  # not in config.yaml: filled from the schema
    assert config["datasets"]["ml-100k"]["max_bad_lines"] == 0
    assert config["results"] == "results"


def test_minimal_config_gets_every_block():
    config = cfg.validate({"datasets": {"x": {"format": "steam", "path": "/data"}}})
    assert config["prepare"]["n_candidates"] == 20
    assert config["prepare"]["max_samples"] == {"train": None, "valid": None, "test": None}
    assert config["sft"]["lora_r"] == 8


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.update(foo=1), "<top level>"),
        (lambda c: c["prepare"].update(kcore="five"), "prepare.kcore"),
        (lambda c: c["prepare"].update(split="random"), "prepare.split"),
        (lambda c: c["datasets"]["ml-100k"].update(format="csv"), "datasets.ml-100k.format"),
        (lambda c: c["datasets"]["ml-100k"].pop("path"), "datasets.ml-100k"),
        (lambda c: c["datasets"]["ml-100k"].update(prepare={"kcore": -1}), "datasets.ml-100k.prepare.kcore"),
        (lambda c: c["datasets"]["ml-100k"].update(prepare={"kcor": 3}), "datasets.ml-100k.prepare.kcor"),
    ],
)
def test_errors_name_the_key(mutate, key):
    config = _default()
    mutate(config)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate(config)
    assert f"'{key}'" in str(err.value)


# Every choice list config/schema.yaml leaves to the code: (put `value` where the list applies, the key the
# error names, the value, the declaration the allowed values come from)
STUDY = {"methods": ["ilora"], "grid": {"epochs": [1]}, "x": "epochs"}
FILLED = {
    "selection_strategy": (lambda c, v: c["selection"].update(strategies=[v]), "selection.strategies.0", "bogus",
                           runs.SELECTIONS),
    "grid_axis": (lambda c, v: c["studies"].update(bad={**STUDY, "x": v}), "studies.bad.x", "bogus",
                  [a.name for a in runs.GRID_AXES]),
    "space_axis": (lambda c, v: c["tuning"].update(spaces={"sft": {v: [1]}}), "tuning.spaces.sft", "prompt",
                   [a.name for a in runs.GRID_AXES if a.block]),
    "gate": (lambda c, v: c["ilora"].update(gate=v), "ilora.gate", "bogus", runs.GATES),
    "grid gate": (lambda c, v: c["studies"].update(bad={**STUDY, "grid": {"gate": [v]}, "x": "gate"}),
                  "studies.bad.grid.gate.0", "bogus", runs.GATES),
    "curriculum": (lambda c, v: c["llara"].update(curriculum=v), "llara.curriculum", "bogus", CURRICULA),
    "ilora curriculum": (lambda c, v: c["ilora"].update(curriculum=v), "ilora.curriculum", "bogus", CURRICULA),
    "quantization": (lambda c, v: c["llm"].update(quantization=v), "llm.quantization", "int4", QUANTIZATION),
    # head items need the block's head_share: lpo4rec's only
    "negatives": (lambda c, v: c["dmpo"].update(strategy=v), "dmpo.strategy", "head_gumbel",
                  [name for name, negatives in NEGATIVES.items() if not negatives.head]),
    "grpo negatives": (lambda c, v: c["grpo"].update(strategy=v), "grpo.strategy", "head_gumbel",
                       [name for name, negatives in NEGATIVES.items() if not negatives.head]),
    "head_negatives": (lambda c, v: c["lpo4rec"].update(strategy=v), "lpo4rec.strategy", "bogus", NEGATIVES),
    "ranked_negatives": (lambda c, v: c["sprec"].update(strategy=v), "sprec.strategy", "random",
                         runs.RANKED_STRATEGIES),
}


@pytest.mark.parametrize("name", FILLED)
def test_choice_lists_come_from_the_code_and_a_bad_value_names_its_key(name):
    mutate, key, value, declared = FILLED[name]
    config = _default()
    mutate(config, value)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate(config)
    assert f"config key '{key}': {value!r} is not one of {list(declared)}" in str(err.value)


def test_the_schema_spells_no_choice_list_the_code_declares():
    """Each `$defs` entry of config.choices() is a placeholder in config/schema.yaml (no enum: read_schema
    fills it), and no enum there lists a declared choice by hand."""
    raw = yaml.safe_load(cfg.SCHEMA_PATH.read_text())
    filled = cfg.read_schema()["$defs"]
    for name, enum in cfg.choices().items():
        assert "enum" not in raw["$defs"][name] and filled[name]["enum"] == enum, name
    listed = [{value.strip() for value in found.split(",")}
              for found in re.findall(r"enum: \[([^\]]*)\]", cfg.SCHEMA_PATH.read_text())]
    # an enum of two or more of one declared list is a copy of it (a single word may be another list's too)
    assert not [(enum, name) for enum in listed for name, declared in cfg.choices().items()
                if len(enum) > 1 and enum <= set(declared)]
    # the claim sides' strategies are the declared ones too
    assert filled["claim_side"]["pattern"].endswith(f"(@({'|'.join(runs.SELECTIONS)}))?$")


def test_the_selection_strategies_are_the_ones_runs_declares():
    """workflow/runs.py declares them (below config.py, which fills the schema from them); the selection
    package takes them from there, and DEALRec's own list must be the same."""
    from workflow import selection
    from workflow.selection import dealrec

    assert selection.STRATEGIES == runs.SELECTIONS and dealrec.STRATEGIES == runs.DEALREC_STRATEGIES


def test_dataset_prepare_overrides_merge():
    config = _default()
    config["datasets"]["ml-100k"]["prepare"] = {"kcore": 3, "max_samples": {"test": 10}}
    config = cfg.validate(config)
    merged = cfg.prepare_settings(config, "ml-100k")
    assert merged["kcore"] == 3
    assert merged["max_samples"]["test"] == 10
    assert merged["max_samples"]["valid"] == config["prepare"]["max_samples"]["valid"]
    assert config["prepare"]["kcore"] == 5  # the global block is untouched


def test_load_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {x: {format: steam, path: /d}}\nseed: nope\n")
    with pytest.raises(cfg.ConfigError, match=r"(?s)bad.yaml.*'seed'"):
        cfg.load(bad)


def _snakemake(*args, cwd=ROOT):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([Path(sys.executable).parent / "snakemake", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_snakemake_lint_is_clean():
    out = _snakemake("--lint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Congratulations" in out.stdout + out.stderr


def test_dry_run_on_default_config(tmp_path):
    out = _snakemake("-n", "--config", f"results={tmp_path}/results")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "prepare" in out.stdout


def dry_run(tmp_path, overlay_text):
    """The commands `snakemake -n -p` plans with an overlay config (results under tmp_path)."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(overlay_text)
    out = _snakemake("-n", "-p", "--configfile", str(overlay), "--config", f"results={tmp_path}/results")
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_sprec_rounds_are_chained_runs(tmp_path):
    """sprec rounds: 3 plans rounds 1 and 2 as runs of their own; each round starts from the previous
    round's adapter and reads the reference log-probs scored under it (round 1: the sft run's)."""
    planned = dry_run(tmp_path, "methods: [base, sprec-open-n256]\nsprec: {prompt: open, rounds: 3}\n"
                                "selection: {strategies: [random]}\n")
    llm = f"{tmp_path}/results/ml-100k/llm"
    starts = re.findall(r"workflow\.llm\.preference --method sprec --adapter (\S+) --reference (\S+)", planned)
    chain = [("sft-open-n256", "sprec-open-r1-n256"), ("sprec-open-r1-n256", "sprec-open-r2-n256"),
             ("sprec-open-r2-n256", "sprec-open-n256")]
    assert sorted(starts) == sorted((f"{llm}/{start}/random/adapter", f"{llm}/{start}/random/reference_logprobs.parquet")
                                    for start, _ in chain)
    for start, run in chain:
        assert f"{llm}/{run}/random/adapter" in planned
    assert len(re.findall(r"workflow\.llm\.reference --adapter", planned)) == 3


def test_sprec_sft_phase_is_chained_before_each_rounds_dpo(tmp_path):
    """sprec.sft_phase (the authors'): each round's start is first trained one epoch further on the
    positives (rule sprec_sft_phase, at the round's lr); the round's DPO starts from that adapter and
    is referenced against its log-probs, while its negatives are ranked by the start's (the previous
    model's) log-probs."""
    planned = dry_run(tmp_path, "methods: [base, sprec-open-n256]\n"
                                "sprec: {prompt: open, rounds: 2, sft_phase: true, lr: 0.0003}\n"
                                "selection: {strategies: [random]}\n")
    llm = f"{tmp_path}/results/ml-100k/llm"
    dpo = re.findall(r"workflow\.llm\.preference --method sprec --adapter (\S+) --reference (\S+) --negatives (\S+)",
                     planned)
    rounds = [("sft-open-n256", "sprec-open-r1-n256"), ("sprec-open-r1-n256", "sprec-open-n256")]
    assert sorted(dpo) == sorted((f"{llm}/{run}/random/sft_phase/adapter",
                                  f"{llm}/{run}/random/sft_phase/reference_logprobs.parquet",
                                  f"{llm}/{start}/random/reference_logprobs.parquet") for start, run in rounds)
    phases = re.findall(r"workflow\.llm\.sft --start-adapter (\S+) .*?--out (\S+) --spec ('[^']*')", planned)
    assert sorted((start, target) for start, target, _ in phases) == sorted(
        (f"{llm}/{start}/random/adapter", f"{llm}/{run}/random/sft_phase/adapter") for start, run in rounds)
    for _, _, spec in phases:
        sft = json.loads(shlex.split(spec)[0])["sft"]
        assert sft["epochs"] == 1 and sft["lr"] == 0.0003
    references = re.findall(r"workflow\.llm\.reference --adapter (\S+)", planned)
    assert sorted(references) == sorted([f"{llm}/sft-open-n256/random/adapter", f"{llm}/sprec-open-r1-n256/random/adapter",
                                         *(f"{llm}/{run}/random/sft_phase/adapter" for _, run in rounds)])


def test_reference_free_runs_plan_no_reference_pass_and_napo_reads_the_surrogate(tmp_path):
    """The reference-free runs (lpo4rec with its head_gumbel negatives, napo with random ones) do not wait for
    the reference log-probs; napo reads the SASRec surrogate, its auxiliary recommender."""
    planned = dry_run(tmp_path, "methods: [base, lpo4rec-open-n256, napo-open-n256, dmpo-open-n256]\n"
                                "selection: {strategies: [random]}\n")
    commands = re.findall(r"workflow\.llm\.preference --method (\w+) --adapter \S+ (--reference \S+)? ?"
                          r"(--surrogate \S+)?", planned)
    assert sorted(commands) == [("dmpo", f"--reference {tmp_path}/results/ml-100k/llm/sft-open-n256/random/"
                                         "reference_logprobs.parquet", ""), ("lpo4rec", "", ""),
                                ("napo", "", f"--surrogate {tmp_path}/results/ml-100k/surrogate")]


def test_snakemake_reports_a_bad_key():
    out = _snakemake("-n", "--config", 'prepare={"kcore": "x"}')
    assert out.returncode != 0
    assert "prepare.kcore" in out.stdout + out.stderr


def test_methods_take_every_run_name_of_the_grammar():
    """`methods` is checked by workflow/runs.py's grammar (no second copy in the schema): the run-name
    flags the docs show are accepted, a wrong one is named with its entry and the reason."""
    config = _default()
    config["methods"] = ["base", "dmpo-open-b0.1-n256", "sprec-open-r2", "ilora-open-x4-gsequence", "soft-open-a0.1",
                         "sft-open-e3-n512-s43"]
    cfg.validate(config)
    config = _default()
    config["methods"] = ["base", "sft-open", "sft-open-x3", "foo"]
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate(config)
    assert "config key 'methods[2]': run name 'sft-open-x3': -x (experts) applies to ilora only" in str(err.value)
    assert "config key 'methods[3]': unknown method 'foo'" in str(err.value)
    assert "methods[0]" not in str(err.value)


def test_nested_overrides_are_typed_by_the_schema():
    """`--config` gives nested values as strings; validate types them by the schema where it takes no
    string, and leaves a string it cannot read for the error that names the key."""
    overrides = {"sft": {"epochs": "2", "lr": "1e-4"}, "llm": {"gpu": "1"}, "dmpo": {"beta": "0.1"},
                 "prepare": {"rating_threshold": "null", "max_samples": {"test": "10"}},
                 "evaluation": {"protocols": ["likelihood"]}, "threads_per_job": "all", "results": "out"}
    config = cfg.validate(_default(), overrides=overrides)
    assert config["sft"]["epochs"] == 2 and config["sft"]["lr"] == 1e-4 and config["llm"]["gpu"] == 1
    assert config["dmpo"]["beta"] == 0.1 and config["prepare"]["rating_threshold"] is None
    assert config["prepare"]["max_samples"] == {"train": None, "valid": 500, "test": 10}  # merged, not replaced
    assert config["evaluation"]["protocols"] == ["likelihood"] and config["threads_per_job"] == "all"
    with pytest.raises(cfg.ConfigError, match="'sft.epochs': 'two' is not of type 'integer'"):
        cfg.validate(_default(), overrides={"sft": {"epochs": "two"}})


@pytest.mark.parametrize("override, planned", [
    ("sft={epochs: 2}", '"epochs": 2,'),
    ("dmpo={beta: 0.1}", '"beta": 0.1,'),
    ("prepare={kcore: 3}", '"kcore": 3,'),
    ("llm={gpu: 1}", "rule preflight:"),
])
def test_nested_config_overrides_on_the_command_line(tmp_path, override, planned):
    out = _snakemake("-n", "-p", "--config", override, f"results={tmp_path}/results")
    assert out.returncode == 0, out.stdout + out.stderr
    assert planned in out.stdout


def test_paper_config_validates():
    config = cfg.load(ROOT / "config" / "paper.yaml")
    assert config["llm"]["device"] == "cuda"
    assert set(config["datasets"]) >= {"games", "steam", "lastfm"}


def test_paper_config_plans_every_method_on_both_splits(tmp_path):
    """`snakemake -n --configfile config/paper.yaml --replace-workflow-config` plans every method of
    the mission (each at its block's prompt) on the valid and test splits of every dataset, DEALRec's
    selection, the authors' LoRA settings for LLaRA / iLoRA, and the GPU preflight first."""
    out = _snakemake("-n", "-p", "--configfile", "config/paper.yaml", "--replace-workflow-config", "--config",
                     f"results={tmp_path}/results")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    runs = ["base-candidate", "base-open", "sft-candidate", "dmpo-candidate", "sdpo-candidate", "dynamicpo-candidate",
            "llara-candidate", "ilora-candidate", "soft-open", "sprec-open"]
    for dataset in ("movielens", "games", "steam", "lastfm"):
        for run in runs:
            for split in ("valid", "test"):
                selection = "none" if run.startswith("base") else "random"
                assert f"{dataset}/llm/{run}/{selection}/{split}/metrics.parquet" in text, (dataset, run, split)
        assert f"{dataset}/llm/sft-candidate/dealrec/test/metrics.parquet" in text
        for run in ("sprec-open-r1", "sprec-open"):  # two self-play rounds, each with its SFT phase
            assert f"{dataset}/llm/{run}/random/sft_phase/adapter" in text
        assert f"{dataset}/selection/dealrec.parquet" in text
    assert "rule preflight:" in text
    ilora = text[text.index("rule hybrid:"):]
    assert '"lora_alpha": 32.0' in ilora or '"lora_alpha": 32' in ilora
    assert '"gate_proj", "up_proj", "down_proj"' in ilora and "workflow.launch --gpus 1" in ilora
    soft = text[text.index("rule soft:"):]
    soft = soft[:soft.index("\n\n")]  # the job's block: its inputs and shell command
    assert "title_embeddings.parquet" in soft and "--title-embeddings" in soft  # early stopping validates
    assert '"early_stopping": {"keep": "last", "metric": "hr@10", "min_delta": 0.0, "patience": 2, "samples": null}' in soft


# Settings the audit found unchecked: each bad value stops validation (so `snakemake` at its start) with
# a line naming its key and what is wrong: (change the default config, the expected line's start).
def _space(method, text):
    return lambda c: c["tuning"].update(spaces={method: yaml.safe_load(text)})


def _config_error(mutate, overrides=None) -> str:
    config = _default()
    mutate(config)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate(config, overrides=overrides)
    return str(err.value)


UNCHECKED = {
    # tuning.spaces: each axis's values typed and bounded as a study grid's
    "space beta": (_space("dmpo", "{beta: [-1.0]}"),
                   "config key 'tuning.spaces.dmpo.beta.0': -1.0 is less than or equal to the minimum of 0"),
    "space epochs float": (_space("sft", "{epochs: [1.5]}"),
                           "config key 'tuning.spaces.sft.epochs.0': 1.5 is not of type 'integer'"),
    "space epochs 0": (_space("sft", "{epochs: [0]}"),
                       "config key 'tuning.spaces.sft.epochs.0': 0 is less than the minimum of 1"),
    "space gate": (_space("ilora", "{gate: [seq]}"),
                   f"config key 'tuning.spaces.ilora.gate.0': 'seq' is not one of {list(runs.GATES)}"),
    # tuning.sasrec: each key's values as the surrogate block's key
    "sasrec lr": (lambda c: c["tuning"].update(sasrec={"lr": [-0.001]}),
                  "config key 'tuning.sasrec.lr.0': -0.001 is less than or equal to the minimum of 0"),
    "sasrec hidden_size": (lambda c: c["tuning"].update(sasrec={"hidden_size": ["64", 32]}),
                           "config key 'tuning.sasrec.hidden_size.0': '64' is not of type 'integer'"),
    "sasrec dropout": (lambda c: c["tuning"].update(sasrec={"dropout": [1.5]}),
                       "config key 'tuning.sasrec.dropout.0': 1.5 is greater than the maximum of 1"),
    "sasrec hidden_size 0": (lambda c: c["tuning"].update(sasrec={"hidden_size": [0]}),
                             "config key 'tuning.sasrec.hidden_size.0': 0 is less than the minimum of 1"),
    # more trials than a space's distinct runs
    "trials space": (lambda c: c["tuning"].update(trials=13, sasrec={}),
                     "config key 'tuning.trials': 13 trials, more than the 12 distinct runs of tuning.spaces.sft"),
    "trials sasrec": (lambda c: c["tuning"].update(trials=13, spaces={}),
                      "config key 'tuning.trials': 13 trials, more than the 12 distinct runs of tuning.sasrec"),
    # metrics a protocol reports
    "tuning metric": (lambda c: c["tuning"].update(metric="acu"),
                      "config key 'tuning.metric': 'acu' is not a metric of tuning.protocol likelihood "
                      "(its metrics: hr@1,"),
    "tuning metric of another protocol": (lambda c: c["tuning"].update(metric="hr@10"),
                                          "config key 'tuning.metric': 'hr@10' is not a metric of tuning.protocol "
                                          "likelihood (its metrics: hr@1, hr@5, ndcg@5, ndcg@10, mrr, auc)"),
    "tuning metrics": (lambda c: c["tuning"].update(metrics=["auc", "hr@l"]),
                       "config key 'tuning.metrics.1': 'hr@l' is not a metric (the metrics of tuning.protocol "
                       "likelihood: hr@1, hr@5, ndcg@5, ndcg@10, mrr, auc)"),
    "study metrics": (lambda c: c["studies"]["collapse"].update(metrics=["hr@1", "acu"]),
                      "config key 'studies.collapse.metrics.1': 'acu' is not a metric (the metrics of the study's "
                      "protocols likelihood: hr@1, hr@5, ndcg@5, ndcg@10, mrr, auc)"),
    "study metrics none reported": (lambda c: c["studies"]["collapse"].update(protocols=["generation"]),
                                    "config key 'studies.collapse.metrics': none of hr@1, ndcg@10 is a metric of the "
                                    "study's protocols generation (theirs: valid, hit, several, history, outside, "
                                    "nothing)"),
    # selection.compare_methods: runs or bare methods of `methods`
    "compare unknown": (lambda c: c["selection"].update(compare_methods=["sfft"]),
                        "config key 'selection.compare_methods.0': 'sfft' is not a trained method "
                        "(trained: sft, dmpo,"),
    "compare base": (lambda c: c["selection"].update(compare_methods=["base"]),
                     "config key 'selection.compare_methods.0': 'base' is not a trained method"),
    "compare run": (lambda c: c["selection"].update(compare_methods=["sft", "dmpo-candidate-n256"]),
                    "config key 'selection.compare_methods.1': 'dmpo-candidate-n256' is no run of `methods` nor a "
                    "tuning trial (runs of `methods`, without -s: sft-open-n256, dmpo-open-n256, llara-open-n256, "
                    "soft-open-n256)"),
    "compare malformed": (lambda c: c["selection"].update(compare_methods=["sft-opn"]),
                          "config key 'selection.compare_methods.0': run name 'sft-opn': unknown prompt 'opn'"),
    # a study grid axis none of its methods takes (as a tuning space's)
    "study axis": (lambda c: c["studies"].update(bad={"methods": ["sft", "llara"], "grid": {"beta": [0.1, 1.0]},
                                                      "x": "beta"}),
                   "config key 'studies.bad.grid.beta': sft, llara do not take beta (it applies to dmpo,"),
    # iLoRA's rank split among its experts
    "ilora run experts": (lambda c: c.update(methods=["base", "ilora-open-x3"]),
                          "config key 'methods[1]': run 'ilora-open-x3': lora_r 8 is not a multiple of n_experts 3"),
    "ilora run rank": (lambda c: c.update(methods=["base", "ilora-open-rank6-n256"]),
                       "config key 'methods[1]': run 'ilora-open-rank6-n256': lora_r 6 is not a multiple of "
                       "n_experts 4"),
    "ilora block": (lambda c: c["ilora"].update(n_experts=3),
                    "config key 'ilora.lora_r': lora_r 8 is not a multiple of n_experts 3"),
    "ilora study": (lambda c: c["studies"]["experts"]["grid"].update(n_experts=[1, 3]),
                    "config key 'studies.experts.grid': run 'ilora-open-x3-n256': lora_r 8 is not a multiple of "
                    "n_experts 3"),
    "ilora trial": (lambda c: c["tuning"].update(trials=4, spaces={"ilora": {"n_experts": [2, 3], "lr": [5e-4, 1e-3]}}),
                    "config key 'tuning.spaces.ilora': run 'ilora-open-x3-n256': lora_r 8 is not a multiple of "
                    "n_experts 3"),
    # explained runs by the run-name grammar
    "explained run": (lambda c: c["explanations"].update(methods=["dmpo", "sdpo-opn"]),
                      "config key 'explanations.methods.1': run name 'sdpo-opn': unknown prompt 'opn'"),
    # anyOf / oneOf: each branch's reason
    "dataset path": (lambda c: c["datasets"].update(x={"format": "movielens-1m"}),
                     "config key 'datasets.x': {'format': 'movielens-1m'} is not valid under any of the given schemas: "
                     "'path' is a required property; or 'source' is a required property"),
    "threads": (lambda c: c.update(threads_per_job="al"),
                "config key 'threads_per_job': 'al' is not valid under any of the given schemas: 'al' is not of type "
                "'integer'; or 'al' is not one of ['all']"),
    # grounded metrics, budgets, the split ratio
    "early stopping metric": (lambda c: c["soft"].update(early_stopping={"metric": "hr@7"}),
                              "config key 'soft.early_stopping.metric': 'hr@7' is not one of "
                              "['hr@1', 'hr@5', 'hr@10',"),
    "run budget": (lambda c: c.update(methods=["base", "sft-open-n4096"]),
                   "config key 'methods[1]': run 'sft-open-n4096': budget 4096 exceeds selection.budget (1024)"),
    "tuning budget": (lambda c: c["tuning"].update(budget=4096),
                      "config key 'tuning.budget': budget 4096 exceeds selection.budget (1024)"),
    "ratio part": (lambda c: c["prepare"].update(ratio=[0.9, -0.1, 0.2]),
                   "config key 'prepare.ratio.1': -0.1 is less than the minimum of 0"),
    "ratio sum": (lambda c: c["prepare"].update(ratio=[0, 0, 0]),
                  "config key 'prepare.ratio': need non-negative parts with a positive sum, got [0, 0, 0]"),
    "dataset ratio sum": (lambda c: c["datasets"]["ml-100k"].update(prepare={"ratio": [0, 0, 0]}),
                          "config key 'datasets.ml-100k.prepare.ratio': need non-negative parts with a positive sum"),
}


@pytest.mark.parametrize("name", UNCHECKED)
def test_a_bad_setting_is_named_with_what_is_wrong(name):
    mutate, line = UNCHECKED[name]
    assert f"\n  {line}" in _config_error(mutate)


def test_a_yaml_exponent_without_a_dot_is_named_in_a_file_and_read_as_a_number_in_an_overlay():
    """PyYAML (YAML 1.1) reads `1e-4` as a string: in a tuning space, as in a study grid, the file's
    value is named with how to write it; an overlay (--configfile, --config) is typed by the schema,
    as a study grid's, so the space's trials are named runs."""
    space = "{lr: [1e-4, 5e-4, 1e-3], beta: [0.1, 1.0]}"
    message = _config_error(_space("dmpo", space))
    assert ("config key 'tuning.spaces.dmpo.lr.0': '1e-4' is not of type 'number' (YAML reads a number with an "
            "exponent but no dot as a string: write 1.0e-4)") in message
    assert "'tuning.spaces.dmpo.lr.2': '1e-3'" in message and "write 1.0e-3" in message
    assert yaml.safe_load("[1.0e-4, 1.0e-3]") == [1e-4, 1e-3]
    study = {"methods": ["dmpo"], "grid": yaml.safe_load(space), "x": "lr"}
    assert "config key 'studies.s.grid.lr.0': '1e-4' is not of type 'number'" in _config_error(
        lambda c: c["studies"].update(s=study))
    overlay = {"tuning": {"spaces": {"dmpo": yaml.safe_load(space)}}}
    config = cfg.validate(_default(), overrides=overlay)
    assert config["studies"]["tuning-dmpo"]["grid"]["lr"] == [1e-4, 5e-4, 1e-3]
    from workflow import tuning

    assert {t["run"] for t in tuning.trials("dmpo", config)["trials"]} <= {
        f"dmpo-open{b}{lr}-n256" for b in ("-b1", "") for lr in ("-lr1e-4", "", "-lr1e-3")}


def test_the_spaces_take_their_value_schemas_from_the_study_grid_and_the_surrogate():
    """Declared once: a tuning space axis's values as the study grid's axis, SASRec's as the surrogate's key."""
    schema = cfg.read_schema()["properties"]
    grid = schema["studies"]["additionalProperties"]["properties"]["grid"]["properties"]
    spaces = schema["tuning"]["properties"]["spaces"]["additionalProperties"]["properties"]
    assert spaces == {a.name: grid[a.name] for a in runs.GRID_AXES if a.block}
    sasrec = schema["tuning"]["properties"]["sasrec"]
    for key, values in sasrec["properties"].items():
        assert values["items"] == {k: v for k, v in schema["surrogate"]["properties"][key].items()
                                   if k not in ("default", "description")}
    assert set(sasrec["properties"]) == set(sasrec["propertyNames"]["enum"])


def test_the_grounded_metrics_are_the_protocols():
    from workflow.protocol_table import PROTOCOLS

    assert cfg.choices()["grounded_metric"] == list(PROTOCOLS["grounded"].metrics)
    cfg.validate(_default() | {"soft": {"early_stopping": {"metric": "ndcg@20"}}})


def test_compare_methods_take_trained_methods_and_run_names_of_methods_or_tuning_trials():
    config = _default()
    config["selection"]["compare_methods"] = ["sft", "dmpo-open-n256"]
    cfg.validate(config)
    config = _default()
    config["seeds"], config["selection"]["compare_methods"] = [42, 43], ["llara-open-n256"]  # every seed of it
    cfg.validate(config)
    # a tuning trial's run (the tuned table reads it on every strategy)
    config = _default()
    config["tuning"]["spaces"] = {"dmpo": {"beta": [0.1, 1.0]}}
    config["tuning"]["trials"], config["selection"]["compare_methods"] = 2, ["dmpo-open-b1-n256"]
    cfg.validate(config)
    # a trained method without a run in `methods`: an overlay may change `methods` and keep the list
    config = _default()
    config["methods"] = ["base", "dmpo-open-n256"]
    config["tuning"]["spaces"] = {}
    assert cfg.validate(config)["selection"]["compare_methods"] == ["sft"]
