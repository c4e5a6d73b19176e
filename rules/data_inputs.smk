# The input functions and specs of rules/data.smk, and the datasets' check when the workflow is parsed.
import re

from workflow.formats import IngestError
from workflow.sources import registry as source_registry, resolve as resolve_source

DOWNLOAD = config["download"]
DOWNLOADS = DOWNLOAD["folder"] or f"{RESULTS}/downloads"


def checked_datasets():
    """dataset -> what its `source` downloads (workflow/sources.py), for the datasets that name one.
    Every other dataset's raw files (and `category`) are checked here, when the workflow is parsed,
    with the message ingest gives, not when its ingest job runs (on a cluster, after queueing)."""
    sourced = {name: entry for name, entry in config["datasets"].items() if "source" in entry}
    for name, entry in config["datasets"].items():
        if name not in sourced:
            resolve_files({"name": name, **entry})
    known = source_registry(DOWNLOAD["registry"]) if sourced else {}
    return {name: resolve_source(name, entry, known) for name, entry in sourced.items()}


try:
    SOURCED = checked_datasets()
except IngestError as exc:
    raise WorkflowError(str(exc)) from None


def source_folder(dataset):
    return f"{DOWNLOADS}/{SOURCED[dataset]['folder']}"


def raw_inputs(wildcards):
    """The two raw files a dataset is read from, so that Snakemake reruns ingestion when they
    change (a sourced dataset: its download folder). The embedded dataset is none: its files lie
    inside the recbole wheel, wherever the virtual environment is, and the pinned wheel is their
    content, so moving the environment changes no result."""
    entry = config["datasets"][wildcards.dataset]
    if wildcards.dataset in SOURCED:
        return [source_folder(wildcards.dataset)]
    if entry.get("path") == "embedded":
        return []
    return [str(p) for p in resolve_files({"name": wildcards.dataset, **entry})]


def ingest_spec(wildcards):
    """The ingest job's --spec: the dataset's entry without its `prepare` overrides, which ingest
    does not read (changing them reruns prepare, not ingest); a sourced dataset's `source` as the
    folder, format and category it was unpacked to."""
    entry = {key: value for key, value in config["datasets"][wildcards.dataset].items() if key != "prepare"}
    if wildcards.dataset in SOURCED:
        sourced = SOURCED[wildcards.dataset]
        entry = {key: value for key, value in entry.items() if key != "source"}
        entry |= {"path": source_folder(wildcards.dataset), "format": sourced["format"],
                  **({"category": sourced["category"]} if "category" in sourced else {})}
    return spec({"name": wildcards.dataset, **entry})


# download folder -> its source's spec (one download however many datasets name the source)
DOWNLOAD_SPECS = {sourced["folder"]: {key: value for key, value in sourced.items() if key != "folder"}
                  | {"mirror": DOWNLOAD["mirror"], "proxy": DOWNLOAD["proxy"]} for sourced in SOURCED.values()}


def download_spec(wildcards):
    return spec(DOWNLOAD_SPECS[wildcards.source])
