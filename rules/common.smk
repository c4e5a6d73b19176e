# Constants, the run grammar's wildcard patterns and the input functions several rule files share.
# Paths and job arguments are plain functions of the config in workflow/dag.py (tested without Snakemake).
from functools import partial

from snakemake.exceptions import WorkflowError

from workflow.dag import (all_targets, baseline_metrics, benchmark_file, dataset_files, llm_table, log_file,
                          method_spec, optional_args, rule_resources, run_method, run_metrics as metrics_of_run,
                          run_part, run_path, selection_file, spec_arg, surrogate_files, surrogate_tables,
                          training_args)
from workflow.methods import of_family
from workflow.runs import PREFERENCE, TRAINED, parse as parse_run, wildcard_pattern

RESULTS = config["results"]
# Rules that ask the scheduler for GPUs (llm.gpu > 0) run in the CUDA environment under --sdm conda.
LLM_ENV = "../envs/gpu.yaml" if config["llm"]["gpu"] else "../envs/cpu.yaml"
# GPUs of the data-parallel stages (training, evaluation) and of the single-process ones (scoring, effort)
LLM_GPUS = config["llm"]["gpu"]
ONE_GPU = min(LLM_GPUS, 1)
# workflow.launch claims distinct free GPUs for jobs side by side on a node (unless the scheduler set
# CUDA_VISIBLE_DEVICES) and starts torchrun for llm.gpu > 1
LAUNCH = f"python -m workflow.launch --gpus {LLM_GPUS} --" if LLM_GPUS else "python -m"
LAUNCH_ONE = f"python -m workflow.launch --gpus {ONE_GPU} --" if ONE_GPU else "python -m"
DATASETS = list(config["datasets"])

# Threads of the compute rules: up to --cores (1 for commands that run no job, where workflow.cores fails:
# --report, --summary; snakemake/snakemake#3691), capped by `threads_per_job` (several small jobs at once
# beat one job on every core on a small CPU). Other rules take Snakemake's 1.
try:
    CORES = workflow.cores
except WorkflowError:
    CORES = 1
JOB_THREADS = CORES if config["threads_per_job"] == "all" else min(int(config["threads_per_job"]), CORES)


wildcard_constraints:
    dataset="|".join(DATASETS) if DATASETS else "[^/]+",
    split="valid|test",
    # one folder: else a run's deeper files (sprec's sft_phase/adapter) also match rule preference's
    # {selection}/adapter, with selection = random/sft_phase/... (PeriodicWildcardError)
    selection="[^/]+",


# Every rule's resources, log and benchmark (`resources: **job_resources(rule, mem, runtime[, gpus])`).
job_resources = partial(rule_resources, config)
logged = partial(log_file, config)
benchmarked = partial(benchmark_file, config)
run_metrics = partial(metrics_of_run, config)

BASE_MODEL = f"{RESULTS}/models/base"
RUN_DIR = run_path(config, "{dataset}", "{run}", "{selection}")  # a run's folder, the rules' pattern
RUN_LOG = run_part("{dataset}", "{run}", "{selection}")  # its logs' and benchmarks' part

# LLM runs: named {method}-{prompt}[-k..][-e..][-n..][-s..] (workflow/runs.py); the `run` wildcard of
# the rules that train each family (workflow/methods.py), evaluate, transfer, or start others (sft, an SPRec round).
RUN_PATTERN = {name: wildcard_pattern(methods) for name, methods in
               {**{family: of_family(family) for family in ("sft", "preference", "hybrid", "soft")},
                "sprec": ["sprec"], "trained": TRAINED, "evaluated": ["base", *TRAINED],
                "transfer": ["sft", *PREFERENCE, "soft"], "referenced": ["sft", "sprec"]}.items()}
SELECTIONS = config["selection"]["strategies"]


def run_items(wildcards):
    """The items table a run reads: the sid prompt's shows every item by its semantic ID (rule
    semantic_ids), every other prompt the titles."""
    if parse_run(wildcards.run).prompt == "sid":
        return f"{RESULTS}/{wildcards.dataset}/data/items_sid.parquet"
    return dataset_files(config, wildcards.dataset, "item_table")["item_table"]


def training_selection(wildcards):
    """The selection file a run trains on (workflow/dag.py selection_file: `random` drawn per seed, -n subsets)."""
    return selection_file(config, wildcards.dataset, wildcards.run, wildcards.selection)


def sft_file(name):
    """An input function: a file of the sft run that a preference or SOFT run starts from (same
    prompt, budget and seed) on the same selection: its adapter, reference log-probs, self-distilled answers."""
    return lambda wildcards: run_path(config, wildcards.dataset, parse_run(wildcards.run).sft().name,
                                      wildcards.selection, name)


# The inputs every LLM training or scoring stage of a run takes, and their arguments
# (`params: args=training_args(config, <its spec>)`, `shell: "... {params.args:q}"`).
TRAINING_INPUTS = {"model": BASE_MODEL, **dataset_files(config, "{dataset}", "samples"), "item_table": run_items,
                   "selection": training_selection}
