# Ingestion (raw files -> canonical Parquet) and preparation (k-core, splits, candidates).


rule ingest:
    input:
        raw_inputs,
    output:
        interactions=f"{RESULTS}/{{dataset}}/data/interactions.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
    params:
        spec=dataset_spec,
    log:
        f"{RESULTS}/logs/{{dataset}}/ingest.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/ingest.tsv"
    threads: 1
    resources:
        **job_resources("ingest", "4GB", "1h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.ingest --spec {params.spec:q} "
        "--interactions {output.interactions:q} --items {output.item_table:q} > {log:q} 2>&1"


rule prepare:
    input:
        interactions=f"{RESULTS}/{{dataset}}/data/interactions.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
    output:
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
    params:
        spec=prepare_spec,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/prepare.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/prepare.tsv"
    threads: 1
    resources:
        **job_resources("prepare", "8GB", "1h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.prepare --spec {params.spec:q} --seed {params.seed} "
        "--interactions {input.interactions:q} --items {input.item_table:q} "
        "--samples {output.samples:q} > {log:q} 2>&1"
