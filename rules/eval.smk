# LLM evaluation (likelihood, generation, grounded full ranking) and the summary table.
# Input functions (evaluation_spec, summary_metrics) live in rules/common.smk.


rule title_embeddings:
    input:
        model=f"{RESULTS}/models/base",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
    output:
        f"{RESULTS}/{{dataset}}/llm/title_embeddings.parquet",
    params:
        launch=LAUNCH_ONE,
        device=config["llm"]["device"],
        dtype=config["llm"]["dtype"],
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/title_embeddings.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/title_embeddings.tsv"
    threads: JOB_THREADS
    resources:
        **job_resources("title_embeddings", "6GB", "1h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.grounding --model-dir {input.model:q} --items {input.item_table:q} "
        "--device {params.device} --dtype {params.dtype} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule evaluate_base:
    input:
        model=f"{RESULTS}/models/base",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        title_embeddings=f"{RESULTS}/{{dataset}}/llm/title_embeddings.parquet",
    output:
        predictions=f"{RESULTS}/{{dataset}}/llm/{{run}}/none/{{split}}/predictions.parquet",
        metrics=f"{RESULTS}/{{dataset}}/llm/{{run}}/none/{{split}}/metrics.parquet",
    wildcard_constraints:
        run=RUN_PATTERN["base"],
    params:
        launch=LAUNCH,
        spec=evaluation_spec,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/none/{{split}}/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/none/{{split}}/evaluate.tsv"
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate_base", "8GB", "2h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.evaluate --model-dir {input.model:q} --samples {input.samples:q} "
        "--items {input.item_table:q} --title-embeddings {input.title_embeddings:q} --spec {params.spec:q} "
        "--dataset {wildcards.dataset} --method {wildcards.run} --selection none --seed {params.seed} --threads {threads} "
        "--predictions {output.predictions:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule evaluate:
    input:
        unpack(hybrid_surrogate),
        model=f"{RESULTS}/models/base",
        adapter=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        title_embeddings=f"{RESULTS}/{{dataset}}/llm/title_embeddings.parquet",
    output:
        predictions=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/{{split}}/predictions.parquet",
        metrics=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/{{split}}/metrics.parquet",
    wildcard_constraints:
        run=TRAINED_RUN_PATTERN,
    params:
        launch=LAUNCH,
        spec=evaluation_spec,
        surrogate=surrogate_args,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/{{split}}/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/{{split}}/evaluate.tsv"
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate", "8GB", "2h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.evaluate --model-dir {input.model:q} --adapter {input.adapter:q} "
        "--samples {input.samples:q} --items {input.item_table:q} --title-embeddings {input.title_embeddings:q} "
        "--spec {params.spec:q} {params.surrogate:q} --dataset {wildcards.dataset} --method {wildcards.run} "
        "--selection {wildcards.selection} --seed {params.seed} --threads {threads} "
        "--predictions {output.predictions:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule summary:
    input:
        summary_metrics,
    output:
        parquet=f"{RESULTS}/summary.parquet",
        md=f"{RESULTS}/summary.md",
    params:
        spec=spec({**config["summary"], "selections": config["selection"]["strategies"]}),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/summary.tsv"
    threads: 1
    resources:
        **job_resources("summary", "4GB", "15m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.summary --metrics {input:q} --spec {params.spec:q} --seed {params.seed} "
        "--out-parquet {output.parquet:q} --out-md {output.md:q} > {log:q} 2>&1"
