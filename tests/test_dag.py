"""The paths and job arguments the rules take from workflow/dag.py, checked without Snakemake (the
dry runs of test_config.py, test_seeds_workflow.py and test_readme.py check them through the rules)."""
from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import pandas as pd
import pytest

from workflow import dag, tuning
from workflow.config import validate
from workflow.runs import at_seed, parse


def config(**overrides):
    return validate({"datasets": {"ml": {"format": "recbole-atomic", "path": "embedded", "domain": "movie"},
                                  "games": {"format": "recbole-atomic", "path": "embedded"}},
                     "methods": ["base", "sft", "dmpo", "ilora", "soft", "sft-open-n64"],
                     "selection": {"strategies": ["random", "dealrec"], "compare_methods": ["sft"]},
                     **overrides})


class Wildcards(SimpleNamespace):
    def keys(self):
        return vars(self).keys()


class Input(dict):
    def __getattr__(self, name):
        return self[name]


def test_a_runs_folder_has_one_spelling():
    c = config(results="out")
    assert dag.run_path(c, "ml", "sft-open", "random", "adapter") == "out/ml/llm/sft-open/random/adapter"
    assert dag.run_part("ml", "sft-open", "random", "train") == "ml/llm/sft-open/random/train"
    assert dag.run_metrics(c, "ml", "sft-open", "random", "valid") == "out/ml/llm/sft-open/random/valid/metrics.parquet"
    assert dag.log_file(c, "ml/ingest") == "out/logs/ml/ingest.log"
    assert dag.benchmark_file(c, dag.run_part("ml", "sft-open", "random", "train")) == \
        "out/benchmarks/ml/llm/sft-open/random/train.tsv"
    assert dag.report_path(c) == "out/report" and dag.report_path(c, "data", "ml.png") == "out/report/data/ml.png"


def test_dataset_files_are_named_inputs():
    c = config()
    assert dag.dataset_files(c, "ml") == {"samples": "results/ml/data/samples.parquet",
                                          "item_table": "results/ml/data/items.parquet"}
    assert list(dag.dataset_files(c, "{dataset}", "interactions", "item_table")) == ["interactions", "item_table"]
    assert list(dag.surrogate_files(c, "ml")) == ["model", "meta", "item_vectors", "sequence_vectors", "metrics"]
    assert dag.surrogate_tables(c, "ml") == {"item_vectors": "results/ml/surrogate/item_embeddings.parquet",
                                             "sequence_vectors": "results/ml/surrogate/sequence_repr.parquet"}
    assert dag.stored_inputs(c, "ml", ["likelihood", "grounded"]) == {
        "title_embeddings": "results/ml/llm/title_embeddings.parquet"}
    assert dag.stored_inputs(c, "ml", ["likelihood"]) == {}


def test_shell_prefix_puts_the_package_and_the_interpreter_first():
    # braces doubled: Snakemake formats the prefix with the job's values
    assert dag.shell_prefix("/a b", "/venv/bin/python") == (
        "export PYTHONPATH='/a b'${{PYTHONPATH:+:$PYTHONPATH}}; python() {{ /venv/bin/python \"$@\"; }}; ")
    assert dag.shell_prefix("/a", None) == "export PYTHONPATH=/a${{PYTHONPATH:+:$PYTHONPATH}}; "


def test_resources_llm_block_and_per_rule_overrides():
    c = config(resources={"llm": {"mem": "40GB", "runtime": None}, "rules": {"sft": {"runtime": "12h"}}})
    assert dag.rule_resources(c, "baselines", "4GB", "30m") == {"mem": "4GB", "runtime": "30m"}
    assert dag.rule_resources(c, "evaluate", "8GB", "2h") == {"mem": "40GB", "runtime": "2h", "gpu": 0}
    assert dag.rule_resources(c, "sft", "12GB", "4h", gpus=2) == {"mem": "40GB", "runtime": "12h", "gpu": 2}
    assert dag.rule_resources(c, "preflight", "2GB", "10m", gpus=1)["gpu"] == 1  # GPUs: the llm block too
    # the SASRec rules: their own override, not the llm block; a GPU when the surrogate runs on cuda
    c = config(resources={"llm": {"mem": "40GB"}, "rules": {"surrogate": {"mem": "3GB"}}}, surrogate={"device": "cuda"})
    assert dag.surrogate_resources(c, "8GB", "2h") == {"mem": "3GB", "runtime": "2h", "gpu": 1}
    assert dag.surrogate_resources(config(), "8GB", "2h") == {"mem": "8GB", "runtime": "2h", "gpu": 0}


def test_resources_of_an_unknown_rule_are_refused():
    # ignored otherwise: on SLURM the job meant would keep its default limit and be killed there
    dag.check_rule_resources(config(resources={"rules": {"sft": {"runtime": "12h"}}}), ["sft", "evaluate"])
    with pytest.raises(ValueError, match=r"config key 'resources\.rules\.sfft': no rule of that name \(the rules: "
                                         r"evaluate, sft;"):
        dag.check_rule_resources(config(resources={"rules": {"sfft": {"runtime": "12h"}}}), ["sft", "evaluate"])


@pytest.mark.parametrize("run, selection, expected", [
    ("sft-open", "random", "random.parquet"),
    ("sft-open-s43", "random", "random-s43.parquet"),
    ("sft-open-s43", "dealrec", "dealrec.parquet"),  # seed-independent
    ("sft-open-n64", "random", "budget/random-n64-s42.parquet"),  # the -n subset at the run's seed
    ("sft-open-n64-s43", "random", "budget/random-s43-n64-s43.parquet"),
])
def test_selection_file_of_a_run(run, selection, expected):
    assert dag.selection_file(config(), "ml", run, selection) == f"results/ml/selection/{expected}"


def test_selection_names_are_read_back_and_matched_by_the_rules_patterns():
    import re

    from workflow.runs import DEALREC_STRATEGIES, SELECTIONS
    from workflow.selection import dealrec

    assert dag.selection_name("random", 43) == "random-s43" and dag.selection_name("all", 43) == "all"
    assert dag.selection_name("random") == "random" and dag.selection_strategy("random") == ("random", None)
    assert dag.selection_strategy(dag.selection_name("random", 43)) == ("random", "43")
    plain = [dag.selection_name(s, seed) for s in dag.PLAIN_STRATEGIES for seed in (None, 43)]
    assert all(re.fullmatch(dag.PLAIN_SELECTION, name) for name in plain)
    assert not any(re.fullmatch(dag.PLAIN_SELECTION, s) for s in DEALREC_STRATEGIES)
    assert all(re.fullmatch(dag.DEALREC_SELECTION, s) for s in DEALREC_STRATEGIES)
    assert set(dag.PLAIN_STRATEGIES) | set(dealrec.SCORES) == set(SELECTIONS)
    c = config()
    assert dag.selection_scores(c, "ml", "dealrec") == str(dealrec.scores_path(dag.selection_table(c, "ml", "dealrec")))
    budget = dag.budget_name("random-s43", 64, 43)
    assert all(re.fullmatch(pattern, value) for pattern, value in
               zip(dag.BUDGET_WILDCARDS.values(), ("random-s43", "64", "43"))) and budget == "random-s43-n64-s43"
    assert {s: dealrec.effort_weight({"lambda": 0.5}, s) for s in dealrec.STRATEGIES} == {
        "dealrec": 0.5, "influence": 0.0, "effort": 1.0}


def test_run_patterns_of_the_rules():
    import re

    pattern = dag.RUN_PATTERN
    assert re.fullmatch(pattern["transfer"], "dmpo-open-n64") and not re.fullmatch(pattern["transfer"], "llara-open")
    assert re.fullmatch(pattern["referenced"], "sprec-open-r1") and re.fullmatch(pattern["referenced"], "sft-open")
    assert not re.fullmatch(pattern["referenced"], "dmpo-open")
    assert re.fullmatch(pattern["ilora"], "ilora-open-x2-s43") and not re.fullmatch(pattern["ilora"], "ilora-open/x")
    assert re.fullmatch(pattern["hybrid"], "llara-open") and re.fullmatch(pattern["sprec"], "sprec-open-r2")


def test_selections_per_run_and_compare_methods():
    c = config()
    assert dag.run_selections(c, parse("base-open")) == ["none"]
    assert dag.run_selections(c, parse("sft-open")) == ["random", "dealrec"]
    assert dag.run_selections(c, parse("dmpo-open")) == ["random"]
    every = config(selection={"strategies": ["random", "dealrec"], "compare_methods": None})
    assert dag.run_selections(every, parse("dmpo-open")) == ["random", "dealrec"]
    assert ("sft-candidate", "dealrec") in dag.method_runs(c)


def test_start_run_of_a_preference_run_and_an_sprec_round():
    c = config(sprec={"rounds": 2})
    assert dag.start_run(c, "dmpo-open-k3-n64").name == "sft-open-n64"
    assert dag.start_run(c, "sprec-open").name == "sprec-open-r1"
    assert dag.start_run(c, "sprec-open-r1").name == "sft-open"


def test_stage_specs_are_sorted_json_of_the_blocks_they_read():
    c = config()
    w = Wildcards(dataset="ml", run="soft-open-n64", split="test")
    soft = json.loads(dag.method_spec(c, w))
    assert soft["prompt"] == "open" and soft["budget"] == 64 and soft["domain"] == "movie" and "alpha" in soft["soft"]
    assert soft["evaluation"] == {"batch_size": c["evaluation"]["batch_size"],
                                  "max_new_tokens": c["evaluation"]["max_new_tokens"]}
    assert json.loads(dag.method_spec(c, Wildcards(dataset="games", run="sft-open")))["domain"] == "item"
    assert dag.spec_arg({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'
    assert json.loads(dag.reference_spec(c, w))["evaluation"] == {"batch_size": c["evaluation"]["batch_size"]}
    assert set(json.loads(dag.distill_spec(c, w))["soft"]) == {"num_beams", "max_new_tokens"}
    pref = json.loads(dag.preference_spec(c, Wildcards(dataset="ml", run="dmpo-open-k3")))
    assert pref["preference"] == c["preference"] and pref["method"]["k"] == 3
    phase = json.loads(dag.sft_phase_spec(c, Wildcards(dataset="ml", run="sprec-open")))["sft"]
    assert phase["epochs"] == 1 and phase["lr"] == c["sprec"]["lr"] and "prompt" not in phase
    evaluation = json.loads(dag.evaluation_spec(c, Wildcards(dataset="ml", run="sft-open", selection="random",
                                                                     split="valid")))
    assert evaluation["evaluation"]["splits"] == ["valid"]


def test_training_args_and_the_optional_flags():
    c = config()
    inputs = Input(model="m", samples="s", item_table="i", selection="sel",
                   item_vectors="results/ml/surrogate/x.parquet")
    args = dag.training_args(c)(Wildcards(dataset="ml", run="sft-open-s43"), inputs, ["out"], 2)
    assert "--spec" not in args  # its own params entry, a function of the wildcards (recorded by Snakemake)
    assert args[args.index("--seed") + 1] == 43 and args[-2:] == ["--out", "out"] and "--threads" in args
    assert dag.surrogate_args(inputs) == ["--surrogate", "results/ml/surrogate"]
    w = Wildcards(dataset="games", run="sft-open", trained_on="ml")
    assert dag.optional_args(w, Input(adapter="a", reference="r")) == [
        "--adapter", "a", "--reference-adapter", "r", "--trained-on", "ml"]
    assert dag.preference_args(w, Input(reference="r", negatives="n")) == ["--reference", "r", "--negatives", "n"]
    assert dag.dealrec_score_args(w, Input(effort="e f")) == "--effort 'e f'"


def test_ingest_spec_leaves_prepare_out():
    c = config(datasets={"ml": {"format": "recbole-atomic", "path": "embedded", "prepare": {"kcore": 3}}})
    assert json.loads(dag.ingest_spec(c, {}, "ml")) == {"name": "ml", "format": "recbole-atomic", "path": "embedded",
                                                        "max_bad_lines": 0}


def test_effort_on_the_sft_adapter_needs_an_sft_run_and_a_plain_strategy():
    effort = {"dealrec": {"effort": {"adapter": "sft"}}}
    c = config(selection={"strategies": ["random", "dealrec"], **effort})
    assert dag.effort_sft_run(c) == (parse("sft-candidate"), "random")
    assert dag.effort_sft_run(config()) is None  # a fresh LoRA (the schema's default)
    with pytest.raises(ValueError, match="needs an sft run"):
        dag.effort_sft_run(config(selection={"strategies": ["dealrec"], **effort}))


def test_targets_of_rule_all():
    c = config(explanations={"methods": ["dmpo"]})
    targets = dag.all_targets(c)
    assert targets[:2] == ["results/ml/data/samples.parquet", "results/games/data/samples.parquet"]
    assert targets[-1] == "results/report/resources.png" and len(targets) == len(set(targets))
    assert "results/ml/llm/dmpo-candidate/random/explanations.html" in targets
    assert "results/ml/llm/ilora-candidate/random/gates.png" in targets
    assert "results/report/training/games.png" in targets
    untuned = config(methods=["base"], explanations={"methods": []})
    assert not [t for t in dag.all_targets(untuned) if "/training/" in t]
    assert not [t for t in targets if "/studies/" in t or "/tuning/" in t]  # studies and tuning: switches
    studied = config(studies={"collapse": {"enabled": True, "methods": ["dmpo"], "grid": {"k": [1, 3]}, "x": "k"}},
                     tuning={"enabled": True})
    targets = dag.all_targets(studied)
    assert {"results/studies/collapse.md", "results/tuning/tuned.md"} <= set(targets)
    # each table also a page of the report
    assert {"results/report/tables/studies/collapse.html", "results/report/tables/tuning/tuned.html"} <= set(targets)
    assert dag.summary_metrics(c)[:4] == [f"results/{d}/{kind}/metrics.parquet" for kind in ("baselines", "surrogate")
                                          for d in ("ml", "games")]
    transfer = config(transfer=[{"from": "ml", "to": "games", "methods": ["sft-candidate"]}])
    assert dag.transfer_targets(transfer) == ["results/games/transfer/ml/sft-candidate/random/test/metrics.parquet",
                                              "results/games/transfer/ml/sft-candidate/dealrec/test/metrics.parquet"]
    assert dag.summary_metrics(transfer)[-2:] == dag.transfer_targets(transfer)


def test_every_table_page_matches_the_page_rule():
    import re

    c = {"results": "results", "studies": {"collapse": {"enabled": True}, "off": {"enabled": False}},
         "tuning": {"enabled": True}}  # what table_pages reads
    pages = dag.table_pages(c)
    assert pages == ["studies/collapse", "tuning/tuned"]
    assert all(re.fullmatch(dag.PAGE_PATTERN, page) for page in pages)
    assert dag.page_table(c, pages[1]) == dag.tuned_files(c)["md"] == "results/tuning/tuned.md"
    assert dag.page_table(c, pages[0]) == dag.study_file(c, "collapse", "md")
    assert dag.page_html(c, pages[0]) == "results/report/tables/studies/collapse.html"
    assert dag.tuning_path(c, "selected.parquet") == "results/tuning/selected.parquet"


def test_a_studys_runs_carry_their_training_benchmark():
    c = config(studies={"lr": {"methods": ["sft"], "x": "lr", "grid": {"lr": [0.001, 0.002]}, "split": "valid",
                               "seeds": [1, 2]}})
    runs = dag.study_runs(c, "lr")
    assert len(runs) == 2 * 2 * 2  # datasets x lr x seeds
    assert all(train.startswith("results/benchmarks/") and train.endswith("/train.tsv") for _, _, train in runs)
    assert all(path.endswith("/valid/metrics.parquet") for _, path, _ in runs)
    assert {labels["seed"] for labels, _, _ in runs} == {1, 2}
    spec = json.loads(dag.study_spec(c, "lr"))
    assert spec["name"] == "lr" and spec["x"] == "lr" and len(spec["runs"]) == len(runs)


def test_a_run_is_evaluated_with_the_protocols_of_what_reads_it():
    """evaluation.protocols for a run of `methods` on an evaluation split, plus those of each study
    that reads the run on that split; a study's run gets only its studies' protocols; a run nothing
    reads falls back to evaluation.protocols. Only those the run's prompt supports."""
    c = config(studies={"curve": {"methods": ["sft"], "x": "budget", "grid": {"prompt": ["open"], "budget": [64, 128]},
                                  "split": "valid",
                                  "protocols": ["likelihood"]},
                        "whole": {"methods": ["sft"], "x": "budget", "grid": {"prompt": ["open", "sid"],
                                                                              "budget": [128]},
                                  "split": "valid", "protocols": ["catalogue"]}},
               evaluation={"protocols": ["likelihood", "grounded"]})

    def protocols(run, split="valid", dataset="ml", selection="random"):
        return dag.run_protocols(c, dataset, parse(run), selection, split)

    assert protocols("sft-open-n64") == ["likelihood"]
    assert protocols("sft-open-n128") == ["likelihood", "catalogue"]  # both studies read it
    assert protocols("sft-sid-n128") == ["catalogue"]  # not scored on the whole split for nothing
    assert protocols("sft-open-n64", "test") == ["likelihood", "grounded"]  # a run of `methods`
    assert protocols("dmpo-open-n512") == ["likelihood", "grounded"]  # nothing reads it
    assert protocols("sft-open-n128", selection="dealrec") == ["likelihood", "grounded"]  # studies: the first strategy
    c["studies"]["curve"]["protocols"] = ["likelihood", "grounded"]  # a changed config is read afresh
    assert protocols("sft-open-n64") == ["likelihood", "grounded"]
    spec = json.loads(dag.evaluation_spec(c, Wildcards(dataset="ml", run="sft-sid-n128", selection="random",
                                                       split="valid")))
    assert spec["evaluation"]["protocols"] == ["catalogue"] and spec["evaluation"]["splits"] == ["valid"]


def test_tunings_paths_inputs_and_the_runs_its_table_reads(tmp_path):
    c = config(results="out", tuning={"spaces": {"sft": {"lr": [0.0001, 0.0005]}}, "sasrec": {"hidden_size": [32, 64]},
                                      "trials": 2, "seeds": [1, 2]})
    assert dag.sasrec_trial_part("ml", "hidden_size32", 1, "train") == "ml/tuning/sasrec/hidden_size32/s1/train"
    # on the first dataset: tuning selects on one
    assert dag.sasrec_trial_path(c, "hidden_size32", 2, "valid.parquet") == \
        "out/ml/tuning/sasrec/hidden_size32/s2/valid.parquet"
    trials = [t["run"] for t in tuning.sasrec_trials(c)["trials"]]
    assert sorted(trials) == ["hidden_size32", "hidden_size64"]
    inputs = dag.tuning_selection_inputs(c)
    assert inputs == {"studies": ["out/studies/tuning-sft.parquet"],
                      "sasrec": [f"out/ml/tuning/sasrec/{t}/s{s}/valid.parquet" for t in trials for s in (1, 2)]}
    spec = json.loads(dag.tuning_selection_spec(c))
    assert spec["methods"]["sft"]["study"] == inputs["studies"][0] and spec["seeds"] == [1, 2]
    assert [p for t in spec["sasrec"]["trials"] for p in t["paths"]] == inputs["sasrec"]
    # the selection's table -> the default and the selected run of each method at every seed, on the test split
    sft = tuning.trials("sft", c)
    pd.DataFrame({"method": ["sft", "sft", "sasrec", "sasrec"], "default_run": [sft["default"]] * 2 + [trials[0]] * 2,
                  "run": [t["run"] for t in sft["trials"]] + trials, "selected": [False, True, False, True]}
                 ).to_parquet(tmp_path / "selected.parquet")
    runs = dag.tuned_runs(c, str(tmp_path / "selected.parquet"))
    tuned = parse(sft["trials"][1]["run"])
    assert c["selection"]["compare_methods"] == ["sft"]  # so on every strategy (DEALRec's claim)
    assert {r["path"] for r in runs if r["method"] == "sft" and r["phase"] == "tuned"} == {
        dag.run_metrics(c, d, at_seed(tuned, s, c).name, strategy) for d in ("ml", "games") for s in (1, 2)
        for strategy in c["selection"]["strategies"]}
    assert [r["path"] for r in runs if r["method"] == "sasrec"] == [
        f"out/ml/tuning/sasrec/{t}/s{s}/test.parquet" for t in trials for s in (1, 2)]
    table = tuning.table_spec(c, runs)
    assert table["runs"] == runs and table["claims"] == c["tuning"]["claims"]
    assert (table["bootstrap"], table["ci"]) == (c["summary"]["bootstrap"], c["summary"]["ci"])


def test_the_inputs_of_a_runs_stages():
    c = config(methods=["base", "sft", "dmpo", "lpo4rec", "napo", "ilora", "sft-sid"])
    w = partial(Wildcards, dataset="ml", selection="random")
    assert dag.run_items(c, w(run="sft-sid")) == "results/ml/data/items_sid.parquet"
    assert dag.run_items(c, w(run="sft-open")) == "results/ml/data/items.parquet"
    assert dag.run_items(c, w(run="sft-cid-n64")) == "results/ml/data/items_cid.parquet"
    # each ID prompt's codes quantise its own embeddings: content (sid) and collaborative (cid) by default
    ids = partial(Wildcards, dataset="ml")
    assert dag.id_embeddings(c, ids(prompt="sid")) == ["results/ml/llm/title_embeddings.parquet"]
    assert dag.id_embeddings(c, ids(prompt="cid")) == ["results/ml/surrogate/item_embeddings.parquet"]
    assert json.loads(dag.id_spec(c, ids(prompt="cid"))) == {"levels": 3, "codebook_size": 32, "iterations": 20,
                                                              "embeddings": ["sasrec"]}
    both = config(semantic_ids={"embeddings": {"cid": ["sasrec", "title"]}})
    assert dag.id_embeddings(both, ids(prompt="cid")) == ["results/ml/surrogate/item_embeddings.parquet",
                                                          "results/ml/llm/title_embeddings.parquet"]
    assert dag.id_files(c, "ml", "cid") == {"codes": "results/ml/data/codes_cid.parquet",
                                            "item_table": "results/ml/data/items_cid.parquet"}
    assert dag.training_selection(c, w(run="sft-open-n64-s43")) == \
        "results/ml/selection/budget/random-s43-n64-s43.parquet"
    assert dag.sft_file(c, "adapter")(w(run="dmpo-open-k3")) == "results/ml/llm/sft-open/random/adapter"
    assert dag.explanation_reference(c, w(run="sft-open")) == {}
    # a preference run reads its start's adapter and reference log-probs; lpo4rec no reference; napo the surrogate
    start = "results/ml/llm/sft-open/random"
    assert dag.preference_inputs(c, w(run="dmpo-open")) == {"adapter": f"{start}/adapter",
                                                            "reference": f"{start}/reference_logprobs.parquet"}
    assert dag.preference_inputs(c, w(run="lpo4rec-open")) == {"adapter": f"{start}/adapter"}
    assert set(dag.preference_inputs(c, w(run="napo-open"))) == {"adapter", "item_vectors", "sequence_vectors"}
    # evaluation: the base model has no adapter; a transferred run's adapter is the one trained on {trained_on}
    base = dag.evaluation_inputs(c, w(run="base-open", selection="none", split="test"))
    assert base["model"] == dag.base_model(c) == "results/models/base" and "adapter" not in base
    moved = dag.evaluation_inputs(c, w(run="sft-open", split="test", trained_on="games"))
    assert moved["adapter"] == "results/games/llm/sft-open/random/adapter"
    assert "item_vectors" in dag.evaluation_inputs(c, w(run="ilora-open", split="test"))
    # DEALRec: dealrec reads both score tables, an ablation its own; a -n subset of a DEALRec selection its pool
    scores = "results/ml/selection/scores"
    assert dag.dealrec_inputs(c, w(selection="dealrec")) == {"samples": "results/ml/data/samples.parquet",
                                                             "influence": f"{scores}/influence.parquet",
                                                             "effort": f"{scores}/effort.parquet"}
    assert set(dag.dealrec_inputs(c, w(selection="effort"))) == {"samples", "effort"}
    assert dag.budget_inputs(c, w(name="dealrec")) == {"selection": "results/ml/selection/dealrec.parquet",
                                                        "scores": "results/ml/selection/dealrec.scores.parquet"}
    assert dag.budget_inputs(c, w(name="random-s43")) == {"selection": "results/ml/selection/random-s43.parquet"}
    assert set(dag.effort_inputs(c, w())) >= {"model", "samples", "item_table"}


def test_raw_inputs_of_ingest(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t1\n")
    (tmp_path / "u.item").write_text("1|A (1995)|01-Jan-1995||http://x\n")
    c = config(datasets={"ml": {"format": "recbole-atomic", "path": "embedded"},
                         "raw": {"format": "movielens-100k", "path": str(tmp_path)}})
    sourced = {"big": {"folder": "amazon-2018/Books"}}
    assert dag.raw_inputs(c, sourced, Wildcards(dataset="ml")) == []  # inside the pinned recbole wheel
    assert dag.raw_inputs(c, sourced, Wildcards(dataset="raw")) == [str(tmp_path / "u.data"), str(tmp_path / "u.item")]
    c["datasets"]["big"] = {"source": "amazon-2018/Books"}
    assert dag.raw_inputs(c, sourced, Wildcards(dataset="big")) == ["results/downloads/amazon-2018/Books"]
