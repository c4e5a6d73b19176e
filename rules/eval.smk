# LLM evaluation (likelihood, generation, grounded full ranking) of every run, the untuned base model
# included, and the summary table.
from workflow.dag import evaluation_inputs, evaluation_spec, summary_files, summary_metrics


rule title_embeddings:
    input:
        model=BASE_MODEL,
        **dataset_files(config, "{dataset}", "item_table"),
    output: llm_table(config, "{dataset}", "title_embeddings"),
    params: launch=LAUNCH_ONE, device=config["llm"]["device"], dtype=config["llm"]["dtype"],
    log: logged("{dataset}/llm/title_embeddings"),
    benchmark: benchmarked("{dataset}/llm/title_embeddings"),
    threads: JOB_THREADS
    resources: **job_resources("title_embeddings", "6GB", "1h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.grounding --model-dir {input.model:q} --items {input.item_table:q} --device "
        "{params.device} --dtype {params.dtype} --threads {threads} --out {output:q} > {log:q} 2>&1"


# A run of `methods` on its selection (`none` for the base model); rules/transfer.smk reuses it.
rule evaluate:
    input: unpack(partial(evaluation_inputs, config)),
    output:
        predictions=f"{RUN_DIR}/{{split}}/predictions.parquet",
        metrics=f"{RUN_DIR}/{{split}}/metrics.parquet",
    wildcard_constraints: run=RUN_PATTERN["evaluated"],
    params: launch=LAUNCH, spec=partial(evaluation_spec, config), options=optional_args, seed=config["seed"],
    log: logged(f"{RUN_LOG}/{{split}}/evaluate"),
    benchmark: benchmarked(f"{RUN_LOG}/{{split}}/evaluate"),
    threads: JOB_THREADS
    resources: **job_resources("evaluate", "8GB", "2h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.evaluate --model-dir {input.model:q} {params.options:q} --samples "
        "{input.samples:q} --items {input.item_table:q} --spec {params.spec:q} --dataset {wildcards.dataset} --run "
        "{wildcards.run} --selection {wildcards.selection} --seed {params.seed} --threads {threads} --predictions "
        "{output.predictions:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule summary:
    input: lambda wildcards: summary_metrics(config),
    output: **summary_files(config),
    params: spec=spec_arg({**config["summary"], "selections": config["selection"]["strategies"]}), seed=config["seed"],
    log: logged("summary"),
    benchmark: benchmarked("summary"),
    resources: **job_resources("summary", "4GB", "15m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.summary --metrics {input:q} --spec {params.spec:q} --seed {params.seed} --out-parquet "
        "{output.parquet:q} --out-md {output.md:q} > {log:q} 2>&1"
