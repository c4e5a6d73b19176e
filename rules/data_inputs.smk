# The input functions and specs of rules/data.smk.


def raw_inputs(wildcards):
    """The two raw files a dataset is read from, so that Snakemake reruns ingestion when they
    change. The embedded dataset is none: its files lie inside the recbole wheel, wherever the
    virtual environment is, and the pinned wheel is their content, so moving the environment
    changes no result. A missing folder or file yields no input here; the ingest job then reports
    it with the dataset's name and the file names it expects."""
    entry = config["datasets"][wildcards.dataset]
    if entry.get("path") == "embedded":
        return []
    try:
        return [str(p) for p in resolve_files({"name": wildcards.dataset, **entry})]
    except ValueError:
        return []


def ingest_spec(wildcards):
    """The ingest job's --spec: the dataset's entry without its `prepare` overrides, which ingest
    does not read (changing them reruns prepare, not ingest)."""
    entry = {key: value for key, value in config["datasets"][wildcards.dataset].items() if key != "prepare"}
    return spec({"name": wildcards.dataset, **entry})
