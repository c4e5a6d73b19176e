# Cross-domain transfer (config `transfer`, workflow/transfer.py): a run's adapter trained on dataset
# {trained_on} evaluated on {dataset}'s test samples, with {dataset}'s prompts, domain word, items and
# title embeddings. Input functions (evaluation_spec, transfer_targets) live in rules/common.smk.


rule evaluate_transfer:
    input:
        model=f"{RESULTS}/models/base",
        adapter=f"{RESULTS}/{{trained_on}}/llm/{{run}}/{{selection}}/adapter",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        title_embeddings=f"{RESULTS}/{{dataset}}/llm/title_embeddings.parquet",
    output:
        predictions=f"{RESULTS}/{{dataset}}/transfer/{{trained_on}}/{{run}}/{{selection}}/{{split}}/predictions.parquet",
        metrics=f"{RESULTS}/{{dataset}}/transfer/{{trained_on}}/{{run}}/{{selection}}/{{split}}/metrics.parquet",
    wildcard_constraints:
        run=TRANSFER_RUN_PATTERN,
        trained_on="|".join(DATASETS),
    params:
        launch=LAUNCH,
        spec=evaluation_spec,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/transfer/{{trained_on}}/{{run}}/{{selection}}/{{split}}/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/transfer/{{trained_on}}/{{run}}/{{selection}}/{{split}}/evaluate.tsv"
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate_transfer", "8GB", "2h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.evaluate --model-dir {input.model:q} --adapter {input.adapter:q} "
        "--samples {input.samples:q} --items {input.item_table:q} --title-embeddings {input.title_embeddings:q} "
        "--spec {params.spec:q} --dataset {wildcards.dataset} --trained-on {wildcards.trained_on} "
        "--method {wildcards.run} --selection {wildcards.selection} --seed {params.seed} --threads {threads} "
        "--predictions {output.predictions:q} --metrics {output.metrics:q} > {log:q} 2>&1"
