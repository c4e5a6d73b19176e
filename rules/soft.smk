# SOFT (workflow/llm/soft.py): the sft backbone's self-distilled answers to its own training prompts,
# once per backbone and shared by every SOFT run of it (any alpha), then a fresh LoRA per SOFT run on
# the true and the self-distilled answers. Input functions in rules/common.smk (the SOFT section).


rule self_distill:
    input:
        model=f"{RESULTS}/models/base",
        adapter=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        selection=training_selection,
    output:
        table=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/self_distilled.parquet",
        stats=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/self_distilled_stats.tsv",
    wildcard_constraints:
        run=RUN_PATTERN["sft"],
    params:
        launch=LAUNCH_ONE,
        spec=self_distill_spec,
        seed=training_seed,
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/self_distill.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/self_distill.tsv"
    priority: 10  # on the chain a SOFT result waits for (see rule sft)
    threads: JOB_THREADS
    resources:
        **job_resources("self_distill", "8GB", "2h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.soft distill --model-dir {input.model:q} --adapter {input.adapter:q} "
        "--samples {input.samples:q} --items {input.item_table:q} --selection {input.selection:q} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output.table:q} "
        "--stats {output.stats:q} > {log:q} 2>&1"


rule soft:
    input:
        model=f"{RESULTS}/models/base",
        distilled=sft_self_distilled,
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        selection=training_selection,
    output:
        directory(f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter"),
    wildcard_constraints:
        run=RUN_PATTERN["soft"],
    params:
        launch=LAUNCH,
        spec=soft_spec,
        seed=training_seed,
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/train.tsv"
    priority: 10  # on the chain a SOFT result waits for (see rule sft)
    threads: JOB_THREADS
    resources:
        **job_resources("soft", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.soft train --model-dir {input.model:q} --distilled {input.distilled:q} "
        "--samples {input.samples:q} --items {input.item_table:q} --selection {input.selection:q} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"
