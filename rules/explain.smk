# Explanations: per-token log-probs of a trained run's top candidate under the tuned model and its
# reference (the SFT adapter of the same selection; the base model for sft itself). Input functions
# (explanation_spec, explanation_reference, reference_adapter_args) and explanation_targets() live in
# rules/common.smk.


rule explain:
    input:
        unpack(explanation_reference),
        model=f"{RESULTS}/models/base",
        adapter=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter",
        predictions=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/test/predictions.parquet",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
    output:
        parquet=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/explanations.parquet",
        html=report(f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/explanations.html",
                    caption="../report/explanations.rst", category="Explanations",
                    subcategory="{dataset}"),
    wildcard_constraints:
        run=TRAINED_RUN_PATTERN,
    params:
        launch=LAUNCH_ONE,
        spec=explanation_spec,
        reference=reference_adapter_args,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/explain.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/explain.tsv"
    threads: JOB_THREADS
    resources:
        **job_resources("explain", "8GB", "1h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.explain --model-dir {input.model:q} --adapter {input.adapter:q} "
        "{params.reference:q} --predictions {input.predictions:q} --samples {input.samples:q} "
        "--items {input.item_table:q} --spec {params.spec:q} --dataset {wildcards.dataset} "
        "--method {wildcards.run} --selection {wildcards.selection} --seed {params.seed} "
        "--threads {threads} --out-parquet {output.parquet:q} --out-html {output.html:q} > {log:q} 2>&1"
