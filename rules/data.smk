# Downloads of the datasets that name a `source`, ingestion (raw files -> canonical Parquet) and
# preparation (k-core, splits, candidates).
include: "data_inputs.smk"


rule download:
    localrule: True  # on the machine Snakemake runs on: cluster nodes often have no way out
    output: directory(f"{DOWNLOADS}/{{source}}"),
    wildcard_constraints: source="|".join(map(re.escape, DOWNLOAD_SPECS)) or "(?!)",
    params: spec=lambda wildcards: spec_arg(DOWNLOAD_SPECS[wildcards.source]),
    log: logged("downloads/{source}"),
    benchmark: benchmarked("downloads/{source}"),
    resources: **job_resources("download", "1GB", "8h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.sources --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule ingest:
    input: partial(raw_inputs, config, SOURCED),
    output: **dataset_files(config, "{dataset}", "interactions", "item_table"),
    params: spec=lambda wildcards: ingest_spec(config, SOURCED, wildcards.dataset),
    log: logged("{dataset}/ingest"),
    benchmark: benchmarked("{dataset}/ingest"),
    resources: **job_resources("ingest", "4GB", "1h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.ingest --spec {params.spec:q} --interactions {output.interactions:q} --items "
        "{output.item_table:q} > {log:q} 2>&1"


rule prepare:
    input: **dataset_files(config, "{dataset}", "interactions", "item_table"),
    output: **dataset_files(config, "{dataset}", "samples"),
    params: spec=lambda wildcards: spec_arg(prepare_settings(config, wildcards.dataset)), seed=config["seed"],
    log: logged("{dataset}/prepare"),
    benchmark: benchmarked("{dataset}/prepare"),
    resources: **job_resources("prepare", "8GB", "1h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.prepare --spec {params.spec:q} --seed {params.seed} --interactions "
        "{input.interactions:q} --items {input.item_table:q} --samples {output.samples:q} > {log:q} 2>&1"
