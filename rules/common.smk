# Input functions, wildcard constraints and small helpers shared by every rule file.
import json
from pathlib import Path

from workflow.config import prepare_settings

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
    """The raw files a dataset is read from, so that Snakemake reruns ingestion when they change.
    Formats whose file names vary (gzip or not) resolve them in workflow.ingest; here only
    existing files are listed."""
    ds = config["datasets"][wildcards.dataset]
    if ds["path"] == "embedded":
        return []
    folder = Path(ds["path"])
    if not folder.is_dir():
        return []  # workflow.ingest reports the missing folder with the dataset's name
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def data_targets():
    return expand(f"{RESULTS}/{{dataset}}/data/samples.parquet", dataset=DATASETS)


def all_targets():
    return data_targets()
