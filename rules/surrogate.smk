# SASRec surrogate (RecBole): trained on the train split, early-stopped on valid; exports the
# checkpoint, item embeddings, sequence representations and its baseline metrics (workflow/dag.py surrogate_files).
from workflow.dag import surrogate_folder


rule surrogate:
    input: **dataset_files(config, "{dataset}"),
    output: **surrogate_files(config, "{dataset}"),
    params: out_dir=surrogate_folder(config, "{dataset}"), spec=spec_arg(config["surrogate"]), seed=config["seed"],
    log: logged("{dataset}/surrogate"),
    benchmark: benchmarked("{dataset}/surrogate"),
    priority: 10  # gates llara, ilora and DEALRec's influence: starts with the sft chain (see rule sft)
    threads: JOB_THREADS
    resources: **surrogate_resources(config, "8GB", "2h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.surrogate --samples {input.samples:q} --items {input.item_table:q} --out-dir "
        "{params.out_dir:q} --dataset {wildcards.dataset:q} --spec {params.spec:q} --seed {params.seed} --threads "
        "{threads} > {log:q} 2>&1"
