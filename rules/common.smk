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


def data_targets():
    return expand(f"{RESULTS}/{{dataset}}/data/samples.parquet", dataset=DATASETS)


def surrogate_targets():
    return expand(f"{RESULTS}/{{dataset}}/surrogate/metrics.parquet", dataset=DATASETS)


def all_targets():
    return data_targets() + surrogate_targets()
