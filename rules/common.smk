# Constants, the run grammar, paths and the spec and resource helpers that the rule files share.
# Each rule file holds the input functions of its own rules.
import json
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError

from workflow.config import prepare_settings
from workflow.formats import resolve_files
from workflow.methods import METHODS as METHOD_DECLARATIONS
from workflow.protocol_table import reads as protocol_reads
from workflow.runs import (HYBRID, PREFERENCE, TRAINED, at_seed, block as run_block, config_runs, config_seeds,
                           needs_reference, parse as parse_run, previous_round, run_seed, sft_phase,
                           study_points, study_seeds,
                           wildcard_pattern)
from workflow.transfer import transfers

RESULTS = config["results"]
# Rules that ask the scheduler for GPUs (llm.gpu > 0) run in the CUDA environment under --sdm conda.
LLM_ENV = "../envs/gpu.yaml" if config["llm"]["gpu"] else "../envs/cpu.yaml"
# GPUs of the data-parallel stages (training, evaluation: one process per GPU) and of the
# single-process GPU stages (scoring, self-distillation, effort)
LLM_GPUS = config["llm"]["gpu"]
ONE_GPU = min(LLM_GPUS, 1)
# GPU stages start through workflow.launch: it claims distinct free GPUs for jobs that run side by
# side on one node (unless the scheduler set CUDA_VISIBLE_DEVICES) and starts torchrun for llm.gpu > 1
LAUNCH = f"python -m workflow.launch --gpus {LLM_GPUS} --" if LLM_GPUS else "python -m"
LAUNCH_ONE = f"python -m workflow.launch --gpus {ONE_GPU} --" if ONE_GPU else "python -m"
DATASETS = list(config["datasets"])
BATCH_SIZE = config["evaluation"]["batch_size"]  # of the scoring stages' --spec (reference, self-distillation, SOFT)

# Threads of the compute rules (`threads: JOB_THREADS`): up to workflow.cores, i.e. --cores. Commands that run
# no job take no --cores, and workflow.cores fails there (`snakemake --report`, --summary:
# snakemake/snakemake#3691); they count 1. `threads_per_job` caps them: several small jobs at once
# beat one job on every core on a small CPU (config/config.yaml). Other rules take Snakemake's 1.
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


# the rules that load the LLM (they take `resources.llm` even on a CPU-only config)
LLM_RULES = {"title_embeddings", "evaluate", "evaluate_transfer", "explain", "sft", "hybrid", "reference_logprobs",
             "preference", "gates", "effort_scores", "self_distill", "soft"}


def job_resources(name, mem, runtime, gpus=0):
    """The resources of one rule, for the scheduler. Its own host memory and runtime (sized for the embedded
    default), `resources.llm` for the rules that load the LLM (those with GPUs when llm.gpu > 0;
    `gpus` of them), then `resources.rules.<rule>` (config keys, config/schema.yaml)."""
    out = {"mem": mem, "runtime": runtime}
    if gpus or name in LLM_RULES:
        out |= {k: v for k, v in config["resources"]["llm"].items() if v is not None}
        out["gpu"] = gpus
    return out | config["resources"]["rules"].get(name, {})


def logged(name):
    """A rule's log, `results/logs/<name>.log` (`name` a pattern such as "{dataset}/ingest")."""
    return f"{RESULTS}/logs/{name}.log"


def benchmarked(name):
    """A rule's benchmark record, `results/benchmarks/<name>.tsv` (the resources figure reads them all)."""
    return f"{RESULTS}/benchmarks/{name}.tsv"


# Paths every stage reads. Functions of the dataset: "{dataset}" in a rule's pattern, the name in an input function.
BASE_MODEL = f"{RESULTS}/models/base"


def run_path(dataset, run, selection, *names, under=RESULTS):
    """The one spelling of a run's folder on one selection, or of a file in it (`names`):
    `{under}/{dataset}/llm/{run}/{selection}/...`; `under=None` gives the part its logs and
    benchmarks share (logged, benchmarked)."""
    return Path(under or "", dataset, "llm", run, selection, *names).as_posix()


RUN_DIR = run_path("{dataset}", "{run}", "{selection}")  # the rules' pattern
RUN_LOG = run_path("{dataset}", "{run}", "{selection}", under=None)


def data(dataset, *names):
    """The prepared dataset's files as named inputs: samples and item_table (`items` would shadow
    Namedlist.items()), or those named."""
    paths = {"interactions": "interactions", "samples": "samples", "item_table": "items"}
    return {name: f"{RESULTS}/{dataset}/data/{paths[name]}.parquet" for name in names or ("samples", "item_table")}


def run_items(wildcards):
    """The items table a run reads: the sid prompt's shows every item by its semantic ID (rule
    semantic_ids), every other prompt the titles."""
    if parse_run(wildcards.run).prompt == "sid":
        return f"{RESULTS}/{wildcards.dataset}/data/items_sid.parquet"
    return data(wildcards.dataset, "item_table")["item_table"]


def surrogate_tables(dataset):
    """The surrogate's tables llara and ilora read (item embeddings in the prompt, the gate's sequence
    representations), as named inputs; `--surrogate` takes their folder (optional_args)."""
    folder = f"{RESULTS}/{dataset}/surrogate"
    return {"item_vectors": f"{folder}/item_embeddings.parquet", "sequence_vectors": f"{folder}/sequence_repr.parquet"}


def optional_args(wildcards, input):
    """A params function: the flags of the inputs a job may or may not have (`--adapter`,
    `--reference-adapter`, `--title-embeddings`, `--surrogate FOLDER`), and `--trained-on` for a transferred run."""
    flags = {"adapter": "--adapter", "reference": "--reference-adapter", "title_embeddings": "--title-embeddings"}
    args = [arg for name, flag in flags.items() if name in input.keys() for arg in (flag, input[name])]
    args += surrogate_args(input)
    return args + (["--trained-on", wildcards.trained_on] if "trained_on" in wildcards.keys() else [])


def surrogate_args(input):
    """`--surrogate FOLDER` for a job whose inputs include the surrogate's tables (`surrogate_tables`)."""
    return ["--surrogate", str(Path(input.item_vectors).parent)] if "item_vectors" in input.keys() else []


def spec(obj):
    """A config slice as one JSON string, passed to `python -m workflow.<stage> --spec`."""
    return json.dumps(obj, sort_keys=True)


def domain(wildcards):
    return config["datasets"][wildcards.dataset].get("domain") or "item"


# ---------------------------------------------------------------------------------------------
# LLM runs: named {method}-{prompt}[-k..][-e..][-n..][-s..] (workflow/runs.py); the `run` wildcard.
RUN_PATTERN = {name: wildcard_pattern(methods) for name, methods in
               {"sft": ["sft"], "preference": PREFERENCE, "sprec": ["sprec"], "hybrid": HYBRID, "soft": ["soft"], "trained": TRAINED,
                "evaluated": ["base", *TRAINED], "transfer": ["sft", *PREFERENCE, "soft"],
                "referenced": ["sft", "sprec"]}.items()}  # runs others start from: sft, an SPRec round
SELECTIONS = config["selection"]["strategies"]
RUNS = config_runs(config)
TRAINED_RUNS = [r for r in RUNS if r.method != "base"]
# Training seeds (config `seeds`; workflow/runs.py): every trained run of `methods` once per seed.
# Showcases (explanations, iLoRA's gates) are of the first seed's runs only.
SEEDS = config_seeds(config)
SHOWCASE_RUNS = [r for r in TRAINED_RUNS if run_seed(r, config) == SEEDS[0]]


def training_seed(wildcards):
    """The `--seed` of a run's training stages: its -s, else the config's `seed`."""
    return run_seed(parse_run(wildcards.run), config)


def training_selection(wildcards):
    """The selection file a run trains on. `random` is drawn once per training seed
    (`random-s43.parquet`; the config seed's is `random.parquet`); `all` and the DEALRec selections are
    seed-independent. A run's -n<budget> is its own step, budget_subset, giving the subset of that
    selection at the run's training seed (nested for random / all; a DEALRec re-run at that size)."""
    run = parse_run(wildcards.run)
    seed = run.seed
    name = f"{wildcards.selection}-s{seed}" if wildcards.selection == "random" and seed is not None else wildcards.selection
    if run.budget is None:
        return f"{RESULTS}/{wildcards.dataset}/selection/{name}.parquet"
    return f"{RESULTS}/{wildcards.dataset}/selection/budget/{name}-n{run.budget}-s{run_seed(run, config)}.parquet"


def run_spec(wildcards, **blocks):
    """A stage's --spec: the config blocks given, the dataset's domain word and the run's prompt
    and budget (its -n)."""
    run = parse_run(wildcards.run)
    return spec({**blocks, "llm": config["llm"], "domain": domain(wildcards), "prompt": run.prompt,
                 "budget": run.budget})


def method_spec(wildcards):
    """A training stage's --spec: run_spec with the run's config block under its method's name (sft,
    llara, ilora, soft; SOFT's also with the batch size and answer length it decodes with)."""
    run = parse_run(wildcards.run)
    scoring = ({"evaluation": {"batch_size": BATCH_SIZE, "max_new_tokens": config["evaluation"]["max_new_tokens"]}}
               if run.method == "soft" else {})
    return run_spec(wildcards, **{run.method: run_block(run, config)}, **scoring)


# The inputs and arguments every LLM training or scoring stage of a run takes (workflow/cli.py
# add_training_arguments): `params: args=training_args(method_spec)`, `shell: "... {params.args:q}"`.
TRAINING_INPUTS = {"model": BASE_MODEL, **data("{dataset}", "samples"), "item_table": run_items,
                   "selection": training_selection}


def training_args(spec_of):
    """A params function: --model-dir, --samples, --items, --selection, --spec (`spec_of(wildcards)`),
    --seed (the run's), --threads and --out (the first output) of a training or scoring stage."""
    def args(wildcards, input, output, threads):
        return ["--model-dir", input.model, "--samples", input.samples, "--items", input.item_table,
                "--selection", input.selection, "--spec", spec_of(wildcards), "--seed", training_seed(wildcards),
                "--threads", threads, "--out", output[0]]
    return args


def sft_file(name):
    """An input function: a file of the sft run that a preference or SOFT run starts from (same
    prompt, budget and seed) on the same selection: its adapter, reference log-probs, self-distilled answers."""
    return lambda wildcards: run_path(wildcards.dataset, parse_run(wildcards.run).sft().name, wildcards.selection, name)


def run_selections(run):
    """The selections a run of `methods` trains on: every strategy for the runs (or bare methods)
    `selection.compare_methods` names (all when it is null), the first strategy for the others;
    `none` for the untuned model."""
    if run.method == "base":
        return ["none"]
    compared = config["selection"].get("compare_methods")
    if compared is None or run._replace(seed=None).name in compared or run.method in compared:
        return SELECTIONS
    return SELECTIONS[:1]


def method_runs():
    """(run name, selection) pairs the config asks for."""
    return [(r.name, s) for r in RUNS for s in run_selections(r)]


def run_metrics(dataset, run, selection, split="test"):
    return run_path(dataset, run, selection, split, "metrics.parquet")


def baseline_metrics():
    """The baselines' and the surrogate's metrics of every dataset (the summary's and the studies' floor)."""
    return [f"{RESULTS}/{d}/{kind}/metrics.parquet" for kind in ("baselines", "surrogate") for d in DATASETS]
