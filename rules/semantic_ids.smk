# Item code IDs (workflow/semantic_ids.py), one set per ID prompt: RQ k-means codes of item embeddings
# (sid: the base model's title embeddings; cid: SASRec's; semantic_ids.embeddings), and the items table
# with the IDs as titles that the prompt's runs read (run_items).
from workflow.dag import id_embeddings, id_files, id_spec
from workflow.runs import ID_PROMPTS


rule semantic_ids:
    input:
        **dataset_files(config, "{dataset}"),
        embeddings=partial(id_embeddings, config),
    output: **id_files(config, "{dataset}", "{prompt}"),
    wildcard_constraints: prompt="|".join(ID_PROMPTS),
    params: spec=partial(id_spec, config), seed=config["seed"],
    log: logged("{dataset}/semantic_ids_{prompt}"),
    benchmark: benchmarked("{dataset}/semantic_ids_{prompt}"),
    resources: **job_resources("semantic_ids", "2GB", "15m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.semantic_ids --items {input.item_table:q} --samples {input.samples:q} --embeddings "
        "{input.embeddings:q} --spec {params.spec:q} --seed {params.seed} --threads 1 --out {output.codes:q} "
        "--out-items {output.item_table:q} > {log:q} 2>&1"
