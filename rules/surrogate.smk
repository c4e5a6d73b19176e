# SASRec surrogate (RecBole): trained on the train split, early-stopped on valid; exports the
# checkpoint, item embeddings, sequence representations and its baseline metrics.


rule surrogate:
    input: **dataset_files(config, "{dataset}"),
    output:
        model=f"{RESULTS}/{{dataset}}/surrogate/model.pt",
        meta=f"{RESULTS}/{{dataset}}/surrogate/model.json",
        item_embeddings=surrogate_tables(config, "{dataset}")["item_vectors"],
        sequence_repr=surrogate_tables(config, "{dataset}")["sequence_vectors"],
        metrics=f"{RESULTS}/{{dataset}}/surrogate/metrics.parquet",
    params: out_dir=f"{RESULTS}/{{dataset}}/surrogate", spec=spec_arg(config["surrogate"]), seed=config["seed"],
    log: logged("{dataset}/surrogate"),
    benchmark: benchmarked("{dataset}/surrogate"),
    priority: 10  # gates llara, ilora and DEALRec's influence: starts with the sft chain (see rule sft)
    threads: JOB_THREADS
    resources:
        mem="8GB",
        runtime="2h",
        gpu=1 if config["surrogate"]["device"] == "cuda" else 0,
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.surrogate --samples {input.samples:q} --items {input.item_table:q} --out-dir "
        "{params.out_dir:q} --dataset {wildcards.dataset:q} --spec {params.spec:q} --seed {params.seed} --threads "
        "{threads} > {log:q} 2>&1"
