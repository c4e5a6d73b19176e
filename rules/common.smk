# Input functions, wildcard constraints and small helpers shared by every rule file.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from workflow.config import prepare_settings
from workflow.formats import resolve_files

RESULTS = config["results"]
# Rules that ask the scheduler for GPUs (llm.gpu > 0) run in the CUDA environment under --sdm conda.
LLM_ENV = "../envs/gpu.yaml" if config["llm"]["gpu"] else "../envs/cpu.yaml"
DATASETS = list(config["datasets"])

# Threads of the compute rules (`threads: JOB_THREADS`): up to workflow.cores, i.e. --cores. Commands that run
# no job take no --cores, and workflow.cores fails there (`snakemake --report`, --summary:
# snakemake/snakemake#3691); they count 1.
try:
    CORES = workflow.cores
except WorkflowError:
    CORES = 1
# ... and `threads_per_job` caps them: several small jobs at once beat one job on every core on a
# small CPU (config/config.yaml).
JOB_THREADS = CORES if config["threads_per_job"] == "all" else min(int(config["threads_per_job"]), CORES)


wildcard_constraints:
    dataset="|".join(DATASETS) if DATASETS else "[^/]+",


def spec(obj):
    """A config slice as one JSON string, passed to `python -m workflow.<stage> --spec`."""
    return json.dumps(obj, sort_keys=True)


def dataset_spec(wildcards):
    return spec({"name": wildcards.dataset, **config["datasets"][wildcards.dataset]})


def prepare_spec(wildcards):
    return spec(prepare_settings(config, wildcards.dataset))


def raw_inputs(wildcards):
    """The two raw files a dataset is read from, so that Snakemake reruns ingestion when they
    change. A missing folder or file yields no input here; the ingest job then reports it with the
    dataset's name and the file names it expects."""
    try:
        return [str(p) for p in resolve_files({"name": wildcards.dataset, **config["datasets"][wildcards.dataset]})]
    except ValueError:
        return []


def domain(wildcards):
    return config["datasets"][wildcards.dataset].get("domain") or "item"


def evaluation_spec(wildcards):
    """The config blocks the LLM evaluation reads; the collapse study's extra runs (`{method}-k{k}`)
    use the study's protocols."""
    evaluation = dict(config["evaluation"])
    if "-k" in getattr(wildcards, "method", ""):
        evaluation["protocols"] = config["collapse"]["protocols"]
    return spec({"llm": config["llm"], "evaluation": evaluation, "domain": domain(wildcards)})


def reference_spec(wildcards):
    """What the reference log-probs depend on: the prompts (llm, domain) and the scoring batch."""
    return spec({"llm": config["llm"], "evaluation": {"batch_size": config["evaluation"]["batch_size"]},
                 "domain": domain(wildcards)})


def sft_spec(wildcards):
    return spec({"llm": config["llm"], "sft": config["sft"], "domain": domain(wildcards)})


PREFERENCE_METHODS = ["dmpo", "sdpo", "dynamicpo"]
# A preference run is named by its method, or `{method}-k{k}` for a run of the collapse study that
# overrides the method's k (everything else from the method's config block).
PREFERENCE_RUN = "(" + "|".join(PREFERENCE_METHODS) + r")(-k[0-9]+)?"


def preference_method(run):
    """(method, its config block with the run's k) for a preference run name."""
    method, _, k = run.partition("-k")
    block = dict(config[method])
    if k:
        block["k"] = int(k)
    return method, block


def preference_spec(wildcards):
    _, block = preference_method(wildcards.method)
    return spec({"llm": config["llm"], "preference": config["preference"], "method": block,
                 "domain": domain(wildcards)})


def explanation_spec(wildcards):
    """The config blocks the explanation stage reads (evaluation: which splits were predicted, batch size)."""
    return spec({"llm": config["llm"], "evaluation": config["evaluation"],
                 "explanations": config["explanations"], "domain": domain(wildcards)})


def explanation_reference(wildcards):
    """The reference model's adapter as a named input; none for sft, whose reference is the base model."""
    if wildcards.method == "sft":
        return {}
    return {"reference": f"{RESULTS}/{wildcards.dataset}/llm/sft/{wildcards.selection}/adapter"}


def reference_adapter_args(wildcards, input):
    """`--reference-adapter PATH` when the run has a reference adapter, else nothing."""
    return ["--reference-adapter", input.reference] if "reference" in input.keys() else []


TRAINED_METHODS = [m for m in config["methods"] if m != "base"]
SELECTIONS = config["selection"]["strategies"]


def method_runs():
    """(method, selection) pairs the config asks for; the untuned model is (base, none)."""
    runs = [("base", "none")] if "base" in config["methods"] else []
    return runs + [(m, s) for m in TRAINED_METHODS for s in SELECTIONS]


def llm_metrics(dataset):
    return [f"{RESULTS}/{dataset}/llm/{m}/{s}/metrics.parquet" for m, s in method_runs()]


def summary_metrics(wildcards):
    """Every per-sample metrics table: the surrogate's and each LLM run's, for every dataset."""
    return [f"{RESULTS}/{d}/surrogate/metrics.parquet" for d in DATASETS] + [
        path for d in DATASETS for path in llm_metrics(d)]


def data_targets():
    return expand(f"{RESULTS}/{{dataset}}/data/samples.parquet", dataset=DATASETS)


def surrogate_targets():
    return expand(f"{RESULTS}/{{dataset}}/surrogate/metrics.parquet", dataset=DATASETS)


def explanation_targets():
    """Explanations page and table of every run whose method is in both `explanations.methods` and `methods`."""
    methods = [m for m in config["explanations"]["methods"] if m in TRAINED_METHODS]
    return expand(f"{RESULTS}/{{dataset}}/llm/{{method}}/{{selection}}/explanations.{{ext}}",
                  dataset=DATASETS, method=methods, selection=SELECTIONS, ext=["parquet", "html"])


def collapse_runs(dataset, selection):
    """(method, k, metrics path) of every run of the collapse study. A main run whose k equals a
    study k (and whose strategy is not `all`, which ignores k) is reused instead of retrained."""
    runs = []
    for method in config["collapse"]["methods"]:
        for k in config["collapse"]["ks"]:
            reuse = method in TRAINED_METHODS and config[method]["k"] == k and config[method]["strategy"] != "all"
            run = method if reuse else f"{method}-k{k}"
            runs.append((method, k, f"{RESULTS}/{dataset}/llm/{run}/{selection}/metrics.parquet"))
    return runs


def collapse_inputs(wildcards):
    runs = [path for d in DATASETS for s in SELECTIONS for _, _, path in collapse_runs(d, s)]
    sft = [f"{RESULTS}/{d}/llm/sft/{s}/metrics.parquet" for d in DATASETS for s in SELECTIONS]
    return {"runs": runs, "sft": sft}


def collapse_run_args(wildcards, input):
    """`--run METHOD K PATH` for every run of the study."""
    return [arg for d in DATASETS for s in SELECTIONS for m, k, path in collapse_runs(d, s)
            for arg in ("--run", m, str(k), path)]


def collapse_targets():
    if not config["collapse"]["enabled"]:
        return []
    return [f"{RESULTS}/collapse/collapse.{ext}" for ext in ("parquet", "md", "png")]


REPORT = f"{RESULTS}/report"
RESOURCES_FIGURE = f"{REPORT}/resources.png"


def trained_adapters(wildcards):
    """The adapters (with their train_log.parquet) of a dataset's trained runs, for the loss curves."""
    return [f"{RESULTS}/{wildcards.dataset}/llm/{m}/{s}/adapter" for m, s in method_runs() if m != "base"]


def report_targets():
    """The report's figures and tables (rules/report.smk); the resources figure comes last."""
    targets = [f"{REPORT}/summary.html", f"{REPORT}/metrics"]
    targets += expand(f"{REPORT}/data/{{dataset}}.{{ext}}", dataset=DATASETS, ext=["html", "png"])
    if TRAINED_METHODS:
        targets += expand(f"{REPORT}/training/{{dataset}}.png", dataset=DATASETS)
    return targets + [RESOURCES_FIGURE]


def report_inputs(wildcards):
    """Every other target: the resources figure waits for all jobs' benchmark records."""
    return [t for t in all_targets() if t != RESOURCES_FIGURE]


def all_targets():
    return (data_targets() + surrogate_targets() + [f"{RESULTS}/summary.parquet", f"{RESULTS}/summary.md"]
            + explanation_targets() + collapse_targets() + report_targets())
