# Explanations: per-token log-probs of a trained run's top candidate under the tuned model and its
# reference (the SFT adapter of the same selection; the base model for sft itself).
from workflow.dag import explanation_reference, explanation_spec


rule explain:
    input:
        unpack(partial(explanation_reference, config)),
        model=BASE_MODEL,
        adapter=f"{RUN_DIR}/adapter",
        predictions=f"{RUN_DIR}/test/predictions.parquet",
        **dataset_files(config, "{dataset}"),
    output:
        parquet=f"{RUN_DIR}/explanations.parquet",
        html=report(f"{RUN_DIR}/explanations.html", caption="../report/explanations.rst", category="Explanations",
                    subcategory="{dataset}"),
    wildcard_constraints: run=RUN_PATTERN["trained"],
    params: launch=LAUNCH_ONE, spec=partial(explanation_spec, config), adapters=optional_args, seed=config["seed"],
    log: logged(f"{RUN_LOG}/explain"),
    benchmark: benchmarked(f"{RUN_LOG}/explain"),
    threads: JOB_THREADS
    resources: **job_resources("explain", "8GB", "1h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.explain --model-dir {input.model:q} {params.adapters:q} --predictions "
        "{input.predictions:q} --samples {input.samples:q} --items {input.item_table:q} --spec {params.spec:q} "
        "--dataset {wildcards.dataset} --run {wildcards.run} --selection {wildcards.selection} --seed {params.seed} "
        "--threads {threads} --out-parquet {output.parquet:q} --out-html {output.html:q} > {log:q} 2>&1"
