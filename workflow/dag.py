"""The paths and arguments of the workflow's jobs, as plain functions of the validated config (and of
a job's wildcards, read by attribute). rules/*.smk call them, so the rules stay thin and
tests/test_dag.py checks the layout, the inputs and the stages' --spec without Snakemake. Input
functions that need Snakemake's own objects (a checkpoint's output) stay in rules/*_inputs.smk.
"""
from __future__ import annotations

import json
import shlex
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from workflow.formats import resolve_files
from workflow.protocol_table import reads as protocol_reads
from workflow.methods import FAMILIES, METHODS, gate_reads_inputs, of_family, portable
from workflow.runs import (DEALREC_STRATEGIES, HYBRID, ID_PROMPTS, RUN_AXES, SELECTIONS, TRAINED, Run, at_seed,
                           block as run_block, config_runs, config_seeds, needs_reference, parse as parse_run,
                           previous_round, run_seed, run_selections, sft_phase, study_points, study_seeds,
                           tuning_seeds, tuning_studies, wildcard_pattern)
from workflow.selection import dealrec
from workflow.sources import registry as source_registry, resolve as resolve_source
from workflow.transfer import transfers
from workflow.tuning import sasrec_trials, selection_spec, table_runs

Config = dict[str, Any]

# The rules that load the LLM: they take `resources.llm` even on a CPU-only config.
LLM_RULES = frozenset({"title_embeddings", "evaluate", "evaluate_transfer", "explain", "sft", "hybrid",
                       "reference_logprobs", "preference", "gates", "effort_scores", "self_distill", "soft"})
# The prepared dataset's files by input name (`items` would shadow Namedlist.items()).
DATASET_FILES = {"interactions": "interactions", "samples": "samples", "item_table": "items"}
# The surrogate's files by name; llara, ilora and napo read the two tables (`--surrogate` takes their folder).
SURROGATE_FILES = {"model": "model.pt", "meta": "model.json", "item_vectors": "item_embeddings.parquet",
                   "sequence_vectors": "sequence_repr.parquet", "metrics": "metrics.parquet"}


# The methods trained in rounds, each started from and referenced against the last (sprec: its -r).
SELF_PLAY = next(a.methods for a in RUN_AXES if a.name == "rounds")
# The rules' `run` wildcards (workflow/runs.py wildcard_pattern), so a run name selects the one rule that
# makes it: each family's training rule (workflow/methods.py), an SPRec round's SFT phase, the runs that
# are explained or evaluated, those that transfer (portable), those others start from and are referenced
# against (sft, an SPRec round), iLoRA's gate showcase.
RUN_PATTERN = {name: wildcard_pattern(methods) for name, methods in {
    **{family: of_family(family) for family in FAMILIES}, "sprec": SELF_PLAY, "trained": TRAINED,
    "evaluated": ["base", *TRAINED], "transfer": [m for f in FAMILIES for m in of_family(f) if portable(m)],
    "referenced": [*of_family("sft"), *SELF_PLAY], "ilora": ["ilora"]}.items()}


def shell_prefix(package_root: str, python: str | None) -> str:
    """What every rule's shell command starts with: the package importable from any working directory
    (`--directory`), conda environment or cluster node, installed or not; `python` a shell function
    running the interpreter Snakemake runs under, so the rules work without an activated virtual
    environment (None: under `--sdm conda`, the rule's environment's own). Braces doubled: Snakemake
    formats the prefix."""
    function = f'python() {{{{ {shlex.quote(python)} "$@"; }}}}; ' if python else ""
    return f"export PYTHONPATH={shlex.quote(package_root)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; {function}"


def spec_arg(obj: Any) -> str:
    """A config slice as one JSON string, passed to `python -m workflow.<stage> --spec`."""
    return json.dumps(obj, sort_keys=True)


def rule_resources(config: Config, rule: str, mem: str, runtime: str, gpus: int = 0) -> dict[str, Any]:
    """The resources of one rule, for the scheduler: its own host memory and runtime (sized for the
    embedded default), `resources.llm` for the rules that load the LLM (those with GPUs when
    llm.gpu > 0; `gpus` of them), then `resources.rules.<rule>` (config/schema.yaml)."""
    out = {"mem": mem, "runtime": runtime}
    if gpus or rule in LLM_RULES:
        out |= {k: v for k, v in config["resources"]["llm"].items() if v is not None}
        out["gpu"] = gpus
    return out | config["resources"]["rules"].get(rule, {})


def check_rule_resources(config: Config, rules: Iterable[str]) -> None:
    """Refuse a `resources.rules` key that names no rule: it would be ignored, and on SLURM the job it
    meant would run at its default limits and be killed there."""
    unknown = sorted(set(config["resources"]["rules"]) - set(rules))
    if unknown:
        raise ValueError(f"config key 'resources.rules.{unknown[0]}': no rule of that name (the rules: "
                         f"{', '.join(sorted(rules))}; SASRec's tuning trials take `surrogate`'s)")


def surrogate_resources(config: Config, mem: str, runtime: str) -> dict[str, Any]:
    """The SASRec rules' resources: rule_resources of `surrogate` (its `resources.rules.surrogate`
    applies; `resources.llm` does not, it loads no LLM) and one GPU when `surrogate.device` is cuda."""
    return rule_resources(config, "surrogate", mem, runtime) | {"gpu": int(config["surrogate"]["device"] == "cuda")}


def log_file(config: Config, name: str) -> str:
    """A rule's log, `results/logs/<name>.log` (`name` a pattern such as "{dataset}/ingest")."""
    return f"{config['results']}/logs/{name}.log"


def benchmarks_folder(config: Config) -> str:
    """Every rule's benchmark records (the resources figure reads them all)."""
    return f"{config['results']}/benchmarks"


def benchmark_file(config: Config, name: str) -> str:
    """A rule's benchmark record, `results/benchmarks/<name>.tsv`."""
    return f"{benchmarks_folder(config)}/{name}.tsv"


def run_part(dataset: str, run: str, selection: str, *names: str) -> str:
    """`{dataset}/llm/{run}/{selection}/...`: a run's folder on one selection (or a file in it)
    below results/, logs/ and benchmarks/ alike."""
    return Path(dataset, "llm", run, selection, *names).as_posix()


def run_path(config: Config, dataset: str, run: str, selection: str, *names: str) -> str:
    """The one spelling of a run's folder (or of a file in it) under results/."""
    return f"{config['results']}/{run_part(dataset, run, selection, *names)}"


def run_metrics(config: Config, dataset: str, run: str, selection: str, split: str = "test") -> str:
    return run_path(config, dataset, run, selection, split, "metrics.parquet")


def dataset_files(config: Config, dataset: str, *names: str) -> dict[str, str]:
    """The prepared dataset's files as named inputs: samples and item_table, or those named."""
    return {name: f"{config['results']}/{dataset}/data/{DATASET_FILES[name]}.parquet"
            for name in names or ("samples", "item_table")}


def surrogate_folder(config: Config, dataset: str) -> str:
    """The SASRec surrogate's folder (its stage's --out-dir)."""
    return f"{config['results']}/{dataset}/surrogate"


def surrogate_files(config: Config, dataset: str, *names: str) -> dict[str, str]:
    """The SASRec surrogate's files as named inputs or outputs: all, or those named."""
    return {name: f"{surrogate_folder(config, dataset)}/{SURROGATE_FILES[name]}" for name in names or SURROGATE_FILES}


def surrogate_tables(config: Config, dataset: str) -> dict[str, str]:
    """The surrogate's item embeddings and sequence representations (surrogate_args passes their folder)."""
    return surrogate_files(config, dataset, "item_vectors", "sequence_vectors")


def llm_table(config: Config, dataset: str, name: str) -> str:
    """A table of the dataset made with the base model (e.g. its title embeddings): llm/{name}.parquet."""
    return f"{config['results']}/{dataset}/llm/{name}.parquet"


def id_files(config: Config, dataset: str, prompt: str) -> dict[str, str]:
    """Rule semantic_ids' outputs for one ID prompt (sid, cid): the item codes, and the items table
    with the IDs as titles that the prompt's runs read."""
    folder = f"{config['results']}/{dataset}/data"
    return {"codes": f"{folder}/codes_{prompt}.parquet", "item_table": f"{folder}/items_{prompt}.parquet"}


def id_embeddings(config: Config, wildcards) -> list[str]:
    """The item embedding tables an ID prompt's codes quantise (`semantic_ids.embeddings.<prompt>`), in order."""
    tables = {"title": llm_table(config, wildcards.dataset, "title_embeddings"),
              "sasrec": surrogate_files(config, wildcards.dataset, "item_vectors")["item_vectors"]}
    return [tables[source] for source in config["semantic_ids"]["embeddings"][wildcards.prompt]]


def id_spec(config: Config, wildcards) -> str:
    """Rule semantic_ids' --spec for one ID prompt: the codes' settings and that prompt's embeddings."""
    block = config["semantic_ids"]
    return spec_arg({**{k: v for k, v in block.items() if k != "embeddings"},
                     "embeddings": block["embeddings"][wildcards.prompt]})


def stored_inputs(config: Config, dataset: str, protocols: list[str]) -> dict[str, str]:
    """The stored inputs evaluating `protocols` reads (workflow/protocol_table.py reads; the title
    embeddings for grounded), as named inputs."""
    return {need: llm_table(config, dataset, need) for need in protocol_reads(protocols)}


def baselines_file(config: Config, dataset: str) -> str:
    """The random and popularity baselines' metrics (rule baselines)."""
    return f"{config['results']}/{dataset}/baselines/metrics.parquet"


def baseline_metrics(config: Config) -> list[str]:
    """The baselines' and the surrogate's metrics of every dataset (the summary's and the studies' floor)."""
    return ([baselines_file(config, d) for d in config["datasets"]]
            + [surrogate_files(config, d, "metrics")["metrics"] for d in config["datasets"]])


def run_method(wildcards) -> str:
    """A params function: the run's method (its trainer's --method)."""
    return parse_run(wildcards.run).method


def start_run(config: Config, run_name: str) -> Run:
    """The run a preference run starts from and is referenced against: the sft run of the same
    prompt, budget and seed; for an SPRec round after the first, the previous round."""
    run = parse_run(run_name)
    return previous_round(run, config) or run.sft()


def method_runs(config: Config) -> list[tuple[str, str]]:
    """(run name, selection) pairs the config asks for."""
    return [(r.name, s) for r in config_runs(config) for s in run_selections(config, r)]


def summary_metrics(config: Config) -> list[str]:
    """Every per-sample metrics table the summary reads: the baselines', the surrogate's, each LLM
    run's and each transferred run's (test split)."""
    return (baseline_metrics(config) + [run_metrics(config, d, r, s) for d in config["datasets"]
                                        for r, s in method_runs(config)] + transfer_targets(config))


def trained_adapters(config: Config, dataset: str) -> list[str]:
    """The adapters (with their train_log.parquet) of a dataset's trained runs of `methods`."""
    return [run_path(config, dataset, r, s, "adapter") for r, s in method_runs(config) if s != "none"]


# --------------------------------------------------------------------------- the selection files
# One spelling of the selection files, for the paths here and the wildcards rules/selection.smk
# matches: results/{dataset}/selection/{name}.parquet (selection_name), beside a DEALRec selection its
# scored pool (dealrec.SCORES_SUFFIX), the score tables in scores/, a run's -n subset in budget/.
PLAIN_STRATEGIES = tuple(s for s in SELECTIONS if s not in DEALREC_STRATEGIES)  # random, all: no scores
SEEDED_STRATEGIES = ("random",)  # drawn once per training seed; all and DEALRec's are seed-independent


def selection_part(dataset: str, *names: str) -> str:
    """`{dataset}/selection/...`: the selection folder (or a file in it) below results/, logs/ and
    benchmarks/ alike."""
    return "/".join((dataset, "selection", *names))


def selection_path(config: Config, dataset: str, *names: str) -> str:
    """The dataset's selection folder (results/{dataset}/selection), or a file in it."""
    return f"{config['results']}/{selection_part(dataset, *names)}"


def selection_name(strategy: str, seed: Any = None) -> str:
    """A selection's name (its file's stem): the strategy; a seeded strategy drawn at a training seed
    other than the config's `{strategy}-s{seed}` (the config seed's keeps the bare name, so a default
    config's files stay as they were)."""
    return f"{strategy}-s{seed}" if seed is not None and strategy in SEEDED_STRATEGIES else strategy


def selection_strategy(name: str) -> tuple[str, str | None]:
    """(strategy, seed as the name spells it, or None): selection_name read back."""
    strategy, _, seed = name.partition("-s")
    return strategy, seed or None


# Rule select_training_data's `selection` wildcard (random, all, random-s<seed>); select_dealrec's.
PLAIN_SELECTION = "|".join([*PLAIN_STRATEGIES, *(selection_name(s, "[0-9]+") for s in SEEDED_STRATEGIES)])
DEALREC_SELECTION = "|".join(DEALREC_STRATEGIES)


def budget_name(name: str, budget: Any, seed: Any) -> str:
    """A run's -n subset of selection `name` at its training seed (rule budget_subset's file stem)."""
    return f"{name}-n{budget}-s{seed}"


BUDGET_WILDCARDS = {"name": "[^/]+", "budget": "[0-9]+", "seed": "[0-9]+"}  # rule budget_subset's


def selection_table(config: Config, dataset: str, name: str) -> str:
    return selection_path(config, dataset, f"{name}.parquet")


def selection_scores(config: Config, dataset: str, name: str) -> str:
    """Every candidate's scores of DEALRec selection `name`, beside it (workflow/selection/dealrec.py)."""
    return selection_path(config, dataset, f"{name}{dealrec.SCORES_SUFFIX}")


def score_table(config: Config, dataset: str, score: str) -> str:
    """The stored influence or effort scores (dealrec.SCORE_TABLES) the DEALRec strategies read."""
    return selection_path(config, dataset, "scores", f"{score}.parquet")


def budget_table(config: Config, dataset: str, name: str, budget: Any, seed: Any) -> str:
    return selection_path(config, dataset, "budget", f"{budget_name(name, budget, seed)}.parquet")


def selection_file(config: Config, dataset: str, run_name: str, selection: str) -> str:
    """The selection file a run trains on: its strategy's at the run's seed (selection_name). A run's
    -n<budget> is its own step (rule budget_subset): the subset of that selection at the run's
    training seed (nested for random / all; a DEALRec re-run at that size)."""
    run = parse_run(run_name)
    name = selection_name(selection, run.seed)
    if run.budget is None:
        return selection_table(config, dataset, name)
    return budget_table(config, dataset, name, run.budget, run_seed(run, config))


# --------------------------------------------------------------------------- the rules' inputs
# Input functions of the rules (`partial(f, config)`): what a job reads, from its wildcards.

def base_model(config: Config) -> str:
    """The base model converted once (rule base_model), read by every LLM stage."""
    return f"{config['results']}/models/base"


def preflight_file(config: Config) -> str:
    """Rule preflight's record of a GPU config's checks, which the base model waits for."""
    return f"{config['results']}/preflight/gpu.json"


def run_items(config: Config, wildcards) -> str:
    """The items table a run reads: an ID prompt's (sid, cid) shows every item by its code ID (rule
    semantic_ids), every other prompt the titles."""
    prompt = parse_run(wildcards.run).prompt
    if prompt in ID_PROMPTS:
        return id_files(config, wildcards.dataset, prompt)["item_table"]
    return dataset_files(config, wildcards.dataset)["item_table"]


def training_selection(config: Config, wildcards) -> str:
    """The selection file a run trains on (selection_file)."""
    return selection_file(config, wildcards.dataset, wildcards.run, wildcards.selection)


def sft_file(config: Config, name: str) -> Callable[[Any], str]:
    """An input function: a file of the sft run that a preference or SOFT run starts from (same
    prompt, budget and seed) on the same selection: its adapter, self-distilled answers."""
    return lambda wildcards: run_path(config, wildcards.dataset, parse_run(wildcards.run).sft().name,
                                      wildcards.selection, name)


def start_file(config: Config, wildcards, name: str) -> str:
    """A file (its adapter or its reference log-probs) of the run a preference run starts from and is
    referenced against (start_run: the sft run; for an SPRec round, the previous round)."""
    return run_path(config, wildcards.dataset, start_run(config, wildcards.run).name, wildcards.selection, name)


def preference_inputs(config: Config, wildcards) -> dict[str, str]:
    """What a preference run reads beside the dataset and its selection: its start's adapter and,
    unless the run is reference-free (workflow/runs.py needs_reference: lpo4rec), its start's
    reference log-probs. An SPRec round with its SFT phase starts from, and is referenced against,
    that phase's adapter, and ranks its negatives by its start's log-probs (the previous model's)."""
    run, start = parse_run(wildcards.run), partial(start_file, config, wildcards)
    if sft_phase(run, config):
        phase = partial(run_path, config, wildcards.dataset, wildcards.run, wildcards.selection, "sft_phase")
        return {"adapter": phase("adapter"), "reference": phase("reference_logprobs.parquet"),
                "negatives": start("reference_logprobs.parquet")}
    inputs = {"adapter": start("adapter")}
    if needs_reference(run, config):
        inputs["reference"] = start("reference_logprobs.parquet")
    if METHODS[run.method].surrogate:  # napo's auxiliary recommender: scores, user vectors
        inputs.update(surrogate_tables(config, wildcards.dataset))
    return inputs


def evaluation_inputs(config: Config, wildcards) -> dict[str, str]:
    """What evaluating a run needs: the base model and the dataset; the run's adapter unless it is the
    base model (for a transferred run, the one trained on {trained_on}); the surrogate tables for a
    llara or ilora run; the stored inputs its protocols read (stored_inputs)."""
    run = parse_run(wildcards.run)
    inputs = {"model": base_model(config), **dataset_files(config, wildcards.dataset, "samples"),
              "item_table": run_items(config, wildcards)}
    if run.method != "base":
        trained_on = wildcards.trained_on if "trained_on" in wildcards.keys() else wildcards.dataset
        inputs["adapter"] = run_path(config, trained_on, wildcards.run, wildcards.selection, "adapter")
    if run.method in HYBRID:
        inputs |= surrogate_tables(config, wildcards.dataset)
    protocols = run_protocols(config, wildcards.dataset, run, wildcards.selection, wildcards.split)
    return inputs | stored_inputs(config, wildcards.dataset, protocols)


def explanation_reference(config: Config, wildcards) -> dict[str, str]:
    """The reference model's adapter as a named input: the sft run a preference run started from (a
    SOFT run self-distilled from); none for sft, whose reference is the base model."""
    return {} if parse_run(wildcards.run).method == "sft" else {"reference": sft_file(config, "adapter")(wildcards)}


def effort_inputs(config: Config, wildcards) -> dict[str, str]:
    """The base model, the dataset, and the sft adapter the effort is measured on (effort_sft_run:
    with `effort.adapter: sft`, the DEALRec selection waits for that training)."""
    found = effort_sft_run(config)
    adapter = {"adapter": run_path(config, wildcards.dataset, found[0].name, found[1], "adapter")} if found else {}
    return {**adapter, "model": base_model(config), **dataset_files(config, wildcards.dataset)}


def dealrec_inputs(config: Config, wildcards) -> dict[str, str]:
    """The samples and the score tables a DEALRec strategy selects from (dealrec.SCORES: dealrec both,
    an ablation its own)."""
    return dataset_files(config, wildcards.dataset, "samples") | {
        score: score_table(config, wildcards.dataset, score) for score in dealrec.SCORES[wildcards.selection]}


def budget_inputs(config: Config, wildcards) -> dict[str, str]:
    """The selection a -n subset is drawn from (and, for a DEALRec selection, its scored pool)."""
    inputs = {"selection": selection_table(config, wildcards.dataset, wildcards.name)}
    if wildcards.name in DEALREC_STRATEGIES:
        inputs["scores"] = selection_scores(config, wildcards.dataset, wildcards.name)
    return inputs


# --------------------------------------------------------------------------- the datasets

def downloads_folder(config: Config) -> str:
    return config["download"]["folder"] or f"{config['results']}/downloads"


def sourced_datasets(config: Config) -> dict[str, dict[str, Any]]:
    """dataset -> what its `source` downloads (workflow/sources.py), for the datasets that name one.
    Every other dataset's raw files (and `category`) are checked here, when the workflow is parsed,
    with the message ingest gives (IngestError), not when its ingest job runs (on a cluster, after queueing)."""
    sourced = {name: entry for name, entry in config["datasets"].items() if "source" in entry}
    for name, entry in config["datasets"].items():
        if name not in sourced:
            resolve_files({"name": name, **entry})
    known = source_registry(config["download"]["registry"]) if sourced else {}
    return {name: resolve_source(name, entry, known) for name, entry in sourced.items()}


def raw_inputs(config: Config, sourced: dict[str, dict[str, Any]], wildcards) -> list[str]:
    """The raw files a dataset is read from, so that Snakemake reruns ingestion when they change (a
    sourced dataset: its download folder). The embedded dataset has none: its files lie inside the
    recbole wheel, wherever the virtual environment is, and the pinned wheel is their content, so
    moving the environment changes no result."""
    entry = config["datasets"][wildcards.dataset]
    if wildcards.dataset in sourced:
        return [f"{downloads_folder(config)}/{sourced[wildcards.dataset]['folder']}"]
    if entry.get("path") == "embedded":
        return []
    return [str(p) for p in resolve_files({"name": wildcards.dataset, **entry})]


def download_specs(config: Config, sourced: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """download folder -> its source's spec (one download however many datasets name the source)."""
    network = {"mirror": config["download"]["mirror"], "proxy": config["download"]["proxy"]}
    return {found["folder"]: {key: value for key, value in found.items() if key != "folder"} | network
            for found in sourced.values()}


def ingest_spec(config: Config, sourced: dict[str, dict[str, Any]], dataset: str) -> str:
    """The ingest job's --spec: the dataset's entry without its `prepare` overrides, which ingest
    does not read (changing them reruns prepare, not ingest); a sourced dataset's `source` as the
    folder, format and category it was unpacked to."""
    entry = {key: value for key, value in config["datasets"][dataset].items() if key != "prepare"}
    if dataset in sourced:
        found = sourced[dataset]
        entry = {key: value for key, value in entry.items() if key != "source"}
        entry |= {"path": f"{downloads_folder(config)}/{found['folder']}", "format": found["format"],
                  **({"category": found["category"]} if "category" in found else {})}
    return spec_arg({"name": dataset, **entry})


# --------------------------------------------------------------------------- the stages' arguments

def domain_word(config: Config, dataset: str) -> str:
    return config["datasets"][dataset].get("domain") or "item"  # optional in the schema


def run_spec(config: Config, wildcards, **blocks: Any) -> str:
    """A stage's --spec: the config blocks given, the dataset's domain word and the run's prompt and
    budget (its -n)."""
    run = parse_run(wildcards.run)
    return spec_arg({**blocks, "llm": config["llm"], "domain": domain_word(config, wildcards.dataset),
                     "prompt": run.prompt, "budget": run.budget})


def method_spec(config: Config, wildcards) -> str:
    """A training stage's --spec: run_spec with the run's config block under its method's name (sft,
    llara, ilora, soft; SOFT's also with the batch size and answer length it decodes with)."""
    run = parse_run(wildcards.run)
    evaluation = config["evaluation"]
    scoring = ({"evaluation": {"batch_size": evaluation["batch_size"], "max_new_tokens": evaluation["max_new_tokens"]}}
               if run.method == "soft" else {})
    return run_spec(config, wildcards, **{run.method: run_block(run, config)}, **scoring)


def reference_spec(config: Config, wildcards) -> str:
    """What reference log-probs depend on: the prompts (llm, domain, prompt), budget and batch."""
    return run_spec(config, wildcards, evaluation={"batch_size": config["evaluation"]["batch_size"]})


def distill_spec(config: Config, wildcards) -> str:
    """Self-distillation's: the prompts, beams and batch, not alpha, epochs or lr (every SOFT run of a
    backbone shares the answers)."""
    return run_spec(config, wildcards, evaluation={"batch_size": config["evaluation"]["batch_size"]},
                    soft={k: config["soft"][k] for k in ("num_beams", "max_new_tokens")})


def preference_spec(config: Config, wildcards) -> str:
    return run_spec(config, wildcards, preference=config["preference"],
                    method=run_block(parse_run(wildcards.run), config))


def sft_phase_spec(config: Config, wildcards) -> str:
    """An SPRec round's SFT phase: the sft block for one epoch at the round's learning rate (the
    authors' SFT and DPO steps share theirs); its LoRA keys go unused (the start's stand)."""
    sft = {key: value for key, value in config["sft"].items() if key != "prompt"}
    lr = run_block(parse_run(wildcards.run), config)["lr"]
    return run_spec(config, wildcards, sft={**sft, "epochs": 1, "lr": lr})


def training_args(config: Config):
    """A params function: --model-dir, --samples, --items, --selection, --seed (the run's), --threads
    and --out (the first output) of a training or scoring stage (workflow/cli.py
    add_training_arguments). Its --spec is a params entry of its own, a function of the wildcards
    alone (rules/common.smk: Snakemake records only those, so a changed setting reruns the job)."""
    def args(wildcards, input, output, threads):
        return ["--model-dir", input.model, "--samples", input.samples, "--items", input.item_table,
                "--selection", input.selection, "--seed", run_seed(parse_run(wildcards.run), config),
                "--threads", threads, "--out", output[0]]
    return args


def surrogate_args(input) -> list[str]:
    """`--surrogate FOLDER` for a job whose inputs include the surrogate's tables (surrogate_tables)."""
    return ["--surrogate", str(Path(input.item_vectors).parent)] if "item_vectors" in input.keys() else []


def optional_args(wildcards, input) -> list[str]:
    """A params function: the flags of the inputs a job may or may not have (`--adapter`,
    `--reference-adapter`, `--title-embeddings`, `--surrogate FOLDER`), and `--trained-on` for a
    transferred run."""
    flags = {"adapter": "--adapter", "reference": "--reference-adapter", "title_embeddings": "--title-embeddings"}
    args = [arg for name, flag in flags.items() if name in input.keys() for arg in (flag, input[name])]
    args += surrogate_args(input)
    return args + (["--trained-on", wildcards.trained_on] if "trained_on" in wildcards.keys() else [])


def preference_args(wildcards, input) -> list[str]:
    """A params function: `--reference TABLE` when the run reads one, `--negatives TABLE` when its
    negatives are ranked by another, `--surrogate FOLDER` when it reads the surrogate (napo)."""
    args = [arg for name in ("reference", "negatives") if name in input.keys() for arg in (f"--{name}", input[name])]
    return args + surrogate_args(input)


def dealrec_score_args(wildcards, input) -> str:
    """A params function: `--influence TABLE --effort TABLE`, those a DEALRec strategy reads (dealrec_inputs)."""
    return " ".join(f"--{name} {shlex.quote(input[name])}" for name in dealrec.SCORE_TABLES if name in input.keys())


def run_protocols(config: Config, dataset: str, run: Run, selection: str, split: str) -> list[str]:
    """Protocols a run is evaluated with on a split: `evaluation.protocols` for a run of `methods`
    on one of `evaluation.splits`, and each protocol of every study that reads this run on this split
    (so a run of the tuning alone is not decoded for the catalogue study, whose own runs are not
    scored on 500 samples for the tuning); `evaluation.protocols` for a run nothing asks for. Only
    those the run's prompt supports."""
    wanted = []
    if run.name in {r.name for r in config_runs(config)} and split in config["evaluation"]["splits"]:
        wanted += config["evaluation"]["protocols"]
    wanted += studied_protocols(json.dumps(config, sort_keys=True, default=str)).get(
        run_metrics(config, dataset, run.name, selection, split), [])
    return run.protocols(list(dict.fromkeys(wanted or config["evaluation"]["protocols"])))


@lru_cache(maxsize=8)
def studied_protocols(config_text: str) -> dict[str, list[str]]:
    """Metrics file -> the protocols of every study that reads it (on its split), for the config as
    JSON: built once per config, where each evaluation job's inputs and params ask for it."""
    config = json.loads(config_text)
    out: dict[str, list[str]] = {}
    for name, study in config["studies"].items():
        for _, path, _ in study_runs(config, name):
            out.setdefault(path, []).extend(study["protocols"])
    return out


def evaluation_spec(config: Config, wildcards) -> str:
    """The evaluation of one run on one split (run_protocols)."""
    protocols = run_protocols(config, wildcards.dataset, parse_run(wildcards.run), wildcards.selection,
                              wildcards.split)
    return run_spec(config, wildcards,
                    evaluation={**config["evaluation"], "splits": [wildcards.split], "protocols": protocols})


def explanation_spec(config: Config, wildcards) -> str:
    """The config blocks the explanation stage reads (the test split's predictions, batch size)."""
    return run_spec(config, wildcards, evaluation={**config["evaluation"], "splits": ["test"]},
                    explanations=config["explanations"])


def effort_sft_run(config: Config) -> tuple[Run, str] | None:
    """With `effort.adapter: sft`: (the sft run, the selection) whose adapter the effort is measured
    on, as the authors measure it on a LoRA trained on the data: the first sft run of `methods` at
    the config seed, on the first strategy that is not DEALRec's. The DEALRec selection (and every
    run trained on it) then waits for that training. None for any other `effort.adapter`."""
    if config["selection"]["dealrec"]["effort"]["adapter"] != "sft":
        return None
    plain = [s for s in config["selection"]["strategies"] if s not in DEALREC_STRATEGIES]
    runs = [r for r in config_runs(config) if r.method == "sft" and run_seed(r, config) == config["seed"]]
    if not plain or not runs:
        raise ValueError("config key 'selection.dealrec.effort.adapter': `sft` needs an sft run in `methods` and "
                         "a strategy that is not DEALRec's (random or all) to train it on")
    return runs[0], plain[0]


def effort_spec(config: Config, wildcards) -> str:
    """The LLM the effort is measured on: the base model with the sft block's LoRA and prompt, or
    the trained sft adapter (effort_sft_run) under its run's prompt."""
    lora = {k: config["sft"][k] for k in ("lora_r", "lora_alpha", "lora_dropout", "target_modules")}
    found = effort_sft_run(config)
    return spec_arg({"llm": config["llm"], "sft": lora, "domain": domain_word(config, wildcards.dataset),
                     "prompt": found[0].prompt if found else config["sft"]["prompt"],
                     "selection": {"dealrec": {"effort": config["selection"]["dealrec"]["effort"]}}})


def study_runs(config: Config, name: str) -> list[tuple[dict[str, Any], str, str | None]]:
    """(labels, metrics path, training benchmark) of every run of a study at each of its seeds, on
    every dataset and the first selection strategy (the benchmark: its training job's seconds and
    memory, none for an untuned run, which runs once, at the config seed)."""
    split = config["studies"][name]["split"]
    points = study_points(name, config)
    out = []
    for d in config["datasets"]:
        for s in config["selection"]["strategies"][:1]:
            for labels, run in points:
                trained = run.method != "base"
                for seed in study_seeds(name, config) if trained else [config["seed"]]:
                    seeded = at_seed(run, seed, config) if trained else run
                    train = benchmark_file(config, run_part(d, seeded.name, s, "train")) if trained else None
                    out.append(({**labels, "dataset": d, "selection": s, "seed": seed},
                                run_metrics(config, d, seeded.name, s, split), train))
    return out


def study_part(name: str) -> str:
    """`studies/{name}`: a study's files' stem below results/ (.parquet, .md, .png), logs/ and
    benchmarks/, and its page below the report's tables/ (table_pages)."""
    return f"studies/{name}"


def study_file(config: Config, name: str, ext: str) -> str:
    """A study's table (parquet, md) or plot (png)."""
    return f"{config['results']}/{study_part(name)}.{ext}"


def study_spec(config: Config, name: str) -> str:
    study = config["studies"][name]
    runs = [{**labels, "path": path, "benchmark": train} for labels, path, train in study_runs(config, name)]
    return spec_arg({"name": name, **{key: study[key] for key in ("x", "split", "protocols", "metrics")},
                     "bootstrap": config["summary"]["bootstrap"], "ci": config["summary"]["ci"], "runs": runs})


# --------------------------------------------------------------------------- tuning (workflow/tuning.py)

def study_table(config: Config, name: str) -> str:
    return study_file(config, name, "parquet")


TUNING = "tuning"  # the tuning's folder below results/
TUNED = f"{TUNING}/tuned"  # the tuned table's stem below results/ (.parquet, .md) and the report's tables/


def tuning_path(config: Config, name: str) -> str:
    """A file of the tuning's folder: the selection's `selected.parquet`, `tuned.yaml`."""
    return f"{config['results']}/{TUNING}/{name}"


def tuned_files(config: Config) -> dict[str, str]:
    """The tuned table (rule tuning_table's outputs by name): parquet, and md (a report page)."""
    return {ext: f"{config['results']}/{TUNED}.{ext}" for ext in ("parquet", "md")}


def sasrec_trial_part(dataset: str, trial: str, seed: Any, *names: str) -> str:
    """`{dataset}/tuning/sasrec/{trial}/s{seed}/...`: a SASRec tuning trial at one seed (or a file of
    it) below results/, logs/ and benchmarks/ alike."""
    return Path(dataset, "tuning", "sasrec", trial, f"s{seed}", *names).as_posix()


def sasrec_trial_path(config: Config, trial: str, seed: Any, *names: str) -> str:
    """A file of SASRec trial `trial` at `seed` under results/, on the first dataset (tuning selects on one)."""
    return f"{config['results']}/{sasrec_trial_part(next(iter(config['datasets'])), trial, seed, *names)}"


def tuning_selection_inputs(config: Config) -> dict[str, list[str]]:
    """The selection's inputs: each tuning study's table, each SASRec trial's validation metrics at
    every tuning seed."""
    return {"studies": [study_table(config, name) for name in tuning_studies(config)],
            "sasrec": [sasrec_trial_path(config, t["run"], seed, "valid.parquet")
                       for t in sasrec_trials(config)["trials"] for seed in tuning_seeds(config)]}


def tuning_selection_spec(config: Config) -> str:
    return spec_arg(selection_spec(config, partial(study_table, config), partial(sasrec_trial_path, config)))


def tuned_runs(config: Config, selected: str) -> list[dict[str, Any]]:
    """The runs the tuned table reads on the test split (workflow/tuning.py table_runs), from the
    selection's table `selected`: every dataset's."""
    return table_runs(config, pd.read_parquet(selected), list(config["datasets"]), partial(run_metrics, config),
                      partial(sasrec_trial_path, config))


# --------------------------------------------------------------------------- the targets of rule all

def report_path(config: Config, *names: str) -> str:
    """The report's folder (results/report), or a file in it."""
    return "/".join((config["results"], "report", *names))


def transfer_part(dataset: str, trained_on: str, run: str, selection: str, split: str, *names: str) -> str:
    """`{dataset}/transfer/{trained_on}/{run}/{selection}/{split}/...`: a transferred run's evaluation
    on one split (or a file of it) below results/, logs/ and benchmarks/ alike."""
    return Path(dataset, "transfer", trained_on, run, selection, split, *names).as_posix()


def transfer_path(config: Config, *parts: str) -> str:
    """A file of a transferred run's evaluation under results/ (transfer_part)."""
    return f"{config['results']}/{transfer_part(*parts)}"


def transfer_targets(config: Config) -> list[str]:
    """The test metrics of every transferred run (config `transfer`, workflow/transfer.py), on each
    selection it trains on."""
    return [transfer_path(config, t.dataset, t.trained_on, t.run.name, s, "test", "metrics.parquet")
            for t in transfers(config) for s in run_selections(config, t.run)]


def showcase_runs(config: Config) -> list[Run]:
    """The trained runs of `methods` at the first training seed: those explanations and iLoRA's gates show."""
    first = config_seeds(config)[0]
    return [r for r in config_runs(config) if r.method != "base" and run_seed(r, config) == first]


def explanation_targets(config: Config) -> list[str]:
    """Explanations of every trained run `explanations.methods` names: by its full name, or, at the
    first training seed, by its name without -s or its bare method."""
    wanted, shown = config["explanations"]["methods"], showcase_runs(config)
    return [run_path(config, d, r.name, s, f"explanations.{ext}") for d in config["datasets"]
            for r in config_runs(config) if r.method != "base"
            if r.name in wanted or r in shown and (r._replace(seed=None).name in wanted or r.method in wanted)
            for s in run_selections(config, r) for ext in ("parquet", "html")]


def table_pages(config: Config) -> list[str]:
    """The Markdown tables the config asks for, without `.md`, below results/: each enabled study's,
    and the tuned table when tuning is enabled (the report shows each as an HTML page)."""
    studies = [study_part(name) for name, study in config["studies"].items() if study["enabled"]]
    return studies + ([TUNED] if config["tuning"]["enabled"] else [])


PAGE_PATTERN = f"{study_part('[^/]+')}|{TUNED}"  # rule report_page's `page` wildcard: a table_pages entry


def page_table(config: Config, page: str) -> str:
    """A table_pages entry's Markdown table."""
    return f"{config['results']}/{page}.md"


def page_html(config: Config, page: str) -> str:
    """A table_pages entry as the report's HTML page."""
    return report_path(config, "tables", f"{page}.html")


def study_targets(config: Config) -> list[str]:
    """The enabled studies' tables and plots, and the tuned table when tuning is enabled."""
    studies = [study_file(config, name, ext) for name, study in config["studies"].items()
               if study["enabled"] for ext in ("parquet", "png")]
    return studies + [page_table(config, page) for page in table_pages(config)]


def gate_targets(config: Config) -> list[str]:
    """iLoRA's gate showcase of every ilora run of `methods` that has a gate (not `uniform`), at the
    first training seed."""
    return [run_path(config, d, r.name, s, f"gates.{ext}") for d in config["datasets"] for r in showcase_runs(config)
            if r.method == "ilora" and gate_reads_inputs(run_block(r, config)["gate"])
            for s in run_selections(config, r) for ext in ("parquet", "png")]


def report_targets(config: Config) -> list[str]:
    """The report's figures and tables; the resources figure comes last."""
    targets = [report_path(config, "summary.html"), report_path(config, "metrics"), *gate_targets(config)]
    targets += [page_html(config, page) for page in table_pages(config)]
    targets += [report_path(config, f"data/{d}.{ext}") for d in config["datasets"] for ext in ("html", "png")]
    if any(r.method != "base" for r in config_runs(config)):
        targets += [report_path(config, f"training/{d}.png") for d in config["datasets"]]
    return targets + [report_path(config, "resources.png")]


def summary_files(config: Config) -> dict[str, str]:
    """The summary table (rule summary's outputs by name): parquet, and md to read."""
    return {ext: f"{config['results']}/summary.{ext}" for ext in ("parquet", "md")}


def all_targets(config: Config) -> list[str]:
    """Every output the config asks for: the data, the surrogate, the summary (every run's test
    metrics), the runs' metrics on the other splits of `evaluation.splits` (e.g. valid, to choose
    settings), explanations, studies and the report's figures."""
    datasets = list(config["datasets"])
    splits = [run_metrics(config, d, r, s, split) for split in config["evaluation"]["splits"] if split != "test"
              for d in datasets for r, s in method_runs(config)]
    return ([dataset_files(config, d, "samples")["samples"] for d in datasets]
            + [surrogate_files(config, d, "metrics")["metrics"] for d in datasets]
            + list(summary_files(config).values()) + splits + explanation_targets(config)
            + study_targets(config) + report_targets(config))
