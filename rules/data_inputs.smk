# The input functions and specs of rules/data.smk.


def raw_inputs(wildcards):
    """The two raw files a dataset is read from, so that Snakemake reruns ingestion when they
    change. A missing folder or file yields no input here; the ingest job then reports it with the
    dataset's name and the file names it expects."""
    try:
        return [str(p) for p in resolve_files({"name": wildcards.dataset, **config["datasets"][wildcards.dataset]})]
    except ValueError:
        return []
