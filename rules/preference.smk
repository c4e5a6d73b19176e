# Preference optimisation (DMPO, S-DPO, DynamicPO), each run starting from the SFT adapter of its
# prompt, budget and selection, whose frozen copy is the reference (input functions in common.smk).


# The reference never changes: every candidate of every selected sample is scored once under the
# SFT model, and all preference runs from it (every method, every k, every epoch count) read this table.
rule reference_logprobs:
    input:
        model=f"{RESULTS}/models/base",
        adapter=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        selection=training_selection,
    output:
        f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/reference_logprobs.parquet",
    wildcard_constraints:
        run=RUN_PATTERN["sft"],
    params:
        launch=LAUNCH_ONE,
        spec=reference_spec,
        seed=training_seed,
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/reference_logprobs.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/reference_logprobs.tsv"
    priority: 10  # on the chain every tuned result waits for (see rule sft)
    threads: JOB_THREADS
    resources:
        **job_resources("reference_logprobs", "8GB", "2h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.reference --model-dir {input.model:q} --adapter {input.adapter:q} "
        "--samples {input.samples:q} --items {input.item_table:q} --selection {input.selection:q} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule preference:
    input:
        model=f"{RESULTS}/models/base",
        adapter=sft_adapter,
        reference=sft_reference_logprobs,
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        selection=training_selection,
    output:
        directory(f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter"),
    wildcard_constraints:
        run=RUN_PATTERN["preference"],
    params:
        launch=LAUNCH,
        method=lambda wildcards: parse_run(wildcards.run).method,
        spec=preference_spec,
        seed=training_seed,
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/train.tsv"
    priority: 10  # on the chain every tuned result waits for (see rule sft)
    threads: JOB_THREADS
    resources:
        **job_resources("preference", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.preference --method {params.method} --model-dir {input.model:q} "
        "--adapter {input.adapter:q} --samples {input.samples:q} --items {input.item_table:q} "
        "--selection {input.selection:q} --reference {input.reference:q} --spec {params.spec:q} "
        "--seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


# A study: its runs (trained and evaluated by the rules above) -> one table and one plot.
rule study:
    input:
        unpack(study_inputs),
    output:
        parquet=f"{RESULTS}/studies/{{study}}.parquet",
        md=f"{RESULTS}/studies/{{study}}.md",
        png=report(f"{RESULTS}/studies/{{study}}.png", caption="../report/study.rst", category="Studies",
                   labels={"study": "{study}"}),
    params:
        spec=study_spec,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/studies/{{study}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/studies/{{study}}.tsv"
    threads: 1
    resources:
        **job_resources("study", "4GB", "15m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.study --spec {params.spec:q} --baselines {input.baselines:q} --seed {params.seed} "
        "--out-parquet {output.parquet:q} --out-md {output.md:q} --out-png {output.png:q} > {log:q} 2>&1"
