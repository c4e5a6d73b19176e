# Constants, the run grammar's wildcard patterns and the inputs several rule files share.
# Paths and job arguments are plain functions of the config in workflow/dag.py (tested without Snakemake).
from functools import partial

from snakemake.exceptions import WorkflowError

from workflow.dag import (RUN_PATTERN, all_targets, base_model, baseline_metrics, benchmark_file, dataset_files,
                          llm_table, log_file, method_spec, optional_args, rule_resources, run_items, run_method,
                          run_part, run_path, spec_arg, summary_files, surrogate_files, surrogate_resources,
                          surrogate_tables, training_args, training_selection)

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

BASE_MODEL = base_model(config)
RUN_DIR = run_path(config, "{dataset}", "{run}", "{selection}")  # a run's folder, the rules' pattern
RUN_LOG = run_part("{dataset}", "{run}", "{selection}")  # its logs' and benchmarks' part

# LLM runs: named {method}-{prompt}[-k..][-e..][-n..][-s..] (workflow/runs.py); RUN_PATTERN[...] is the `run`
# wildcard of the rules that train each family, evaluate, transfer or start others (workflow/dag.py).

# The inputs every LLM training or scoring stage of a run takes, and their arguments
# (`params: spec=partial(<its spec>, config), args=training_args(config)`, `shell: "... {params.args:q}
# --spec {params.spec:q}"`): the spec a function of the wildcards alone, so Snakemake records it and a
# changed setting reruns the job (a params function of the inputs is not recorded: snakemake#3895).
TRAINING_INPUTS = {"model": BASE_MODEL, **dataset_files(config, "{dataset}", "samples"),
                   "item_table": partial(run_items, config), "selection": partial(training_selection, config)}
