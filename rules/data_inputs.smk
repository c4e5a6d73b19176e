# The input functions of rules/data.smk, and the datasets' check when the workflow is parsed.
import re

from workflow.config import prepare_settings
from workflow.dag import download_specs, downloads_folder, ingest_spec, sourced_datasets
from workflow.formats import IngestError, resolve_files

DOWNLOADS = downloads_folder(config)
try:
    SOURCED = sourced_datasets(config)
except IngestError as exc:
    raise WorkflowError(str(exc)) from None
DOWNLOAD_SPECS = download_specs(config, SOURCED)


def raw_inputs(wildcards):
    """The two raw files a dataset is read from, so that Snakemake reruns ingestion when they
    change (a sourced dataset: its download folder). The embedded dataset is none: its files lie
    inside the recbole wheel, wherever the virtual environment is, and the pinned wheel is their
    content, so moving the environment changes no result."""
    entry = config["datasets"][wildcards.dataset]
    if wildcards.dataset in SOURCED:
        return [f"{DOWNLOADS}/{SOURCED[wildcards.dataset]['folder']}"]
    if entry.get("path") == "embedded":
        return []
    return [str(p) for p in resolve_files({"name": wildcards.dataset, **entry})]
