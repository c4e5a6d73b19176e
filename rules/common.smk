# Input functions, wildcard constraints and small helpers shared by every rule file.
import json
from pathlib import Path

from workflow.config import prepare_settings
from workflow.formats import resolve_files

RESULTS = config["results"]
DATASETS = list(config["datasets"])


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
    """The config blocks the LLM evaluation reads."""
    return spec({"llm": config["llm"], "evaluation": config["evaluation"], "domain": domain(wildcards)})


def sft_spec(wildcards):
    return spec({"llm": config["llm"], "sft": config["sft"], "domain": domain(wildcards)})


def preference_spec(wildcards):
    return spec({"llm": config["llm"], "preference": config["preference"],
                 "method": config[wildcards.method], "domain": domain(wildcards)})


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


def all_targets():
    return data_targets() + surrogate_targets() + [f"{RESULTS}/summary.parquet", f"{RESULTS}/summary.md"]
