# Item semantic IDs (workflow/semantic_ids.py): RQ k-means codes of item embeddings (the base model's
# title embeddings, SASRec's, or both: semantic_ids.embeddings), and the items table with the IDs as
# titles that the sid prompt's runs read (run_items).
from workflow.dag import sid_embeddings


rule semantic_ids:
    input:
        **dataset_files(config, "{dataset}"),
        embeddings=sid_embeddings(config, "{dataset}"),
    output:
        codes=dataset_files(config, "{dataset}", "semantic_ids")["semantic_ids"],
        item_table=dataset_files(config, "{dataset}", "sid_item_table")["sid_item_table"],
    params: spec=spec_arg(config["semantic_ids"]), seed=config["seed"],
    log: logged("{dataset}/semantic_ids"),
    benchmark: benchmarked("{dataset}/semantic_ids"),
    resources: **job_resources("semantic_ids", "2GB", "15m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.semantic_ids --items {input.item_table:q} --samples {input.samples:q} --embeddings "
        "{input.embeddings:q} --spec {params.spec:q} --seed {params.seed} --threads 1 --out {output.codes:q} "
        "--out-items {output.item_table:q} > {log:q} 2>&1"
