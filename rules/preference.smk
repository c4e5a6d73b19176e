# Preference optimisation (DMPO, S-DPO, DynamicPO), each starting from the SFT adapter of the same
# selection, whose frozen copy is the reference; and the collapse study over their k.


# The reference never changes: every candidate of every selected sample is scored once under the
# SFT model, and all preference runs of the selection (every method, every k) read this table.
rule reference_logprobs:
    input:
        model=f"{RESULTS}/models/base",
        adapter=f"{RESULTS}/{{dataset}}/llm/sft/{{selection}}/adapter",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        selection=f"{RESULTS}/{{dataset}}/selection/{{selection}}.parquet",
    output:
        f"{RESULTS}/{{dataset}}/llm/sft/{{selection}}/reference_logprobs.parquet",
    params:
        spec=reference_spec,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/sft/{{selection}}/reference_logprobs.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/sft/{{selection}}/reference_logprobs.tsv"
    priority: 10  # on the chain every tuned result waits for (see rule sft)
    threads: JOB_THREADS
    resources:
        mem="8GB",
        runtime="2h",
        gpu=config["llm"]["gpu"],
    conda:
        LLM_ENV
    shell:
        "python -m workflow.llm.reference --model-dir {input.model:q} --adapter {input.adapter:q} "
        "--samples {input.samples:q} --items {input.item_table:q} --selection {input.selection:q} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule preference:
    input:
        model=f"{RESULTS}/models/base",
        adapter=f"{RESULTS}/{{dataset}}/llm/sft/{{selection}}/adapter",
        reference=f"{RESULTS}/{{dataset}}/llm/sft/{{selection}}/reference_logprobs.parquet",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        selection=f"{RESULTS}/{{dataset}}/selection/{{selection}}.parquet",
    output:
        directory(f"{RESULTS}/{{dataset}}/llm/{{method}}/{{selection}}/adapter"),
    wildcard_constraints:
        method=PREFERENCE_RUN,
    params:
        method=lambda wildcards: preference_method(wildcards.method)[0],
        spec=preference_spec,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{method}}/{{selection}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{method}}/{{selection}}/train.tsv"
    priority: 10  # on the chain every tuned result waits for (see rule sft)
    threads: JOB_THREADS
    resources:
        mem="12GB",
        runtime="4h",
        gpu=config["llm"]["gpu"],
    conda:
        LLM_ENV
    shell:
        "python -m workflow.llm.preference --method {params.method} --model-dir {input.model:q} "
        "--adapter {input.adapter:q} --samples {input.samples:q} --items {input.item_table:q} "
        "--selection {input.selection:q} --reference {input.reference:q} --spec {params.spec:q} "
        "--seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule collapse_study:
    input:
        unpack(collapse_inputs),
    output:
        parquet=f"{RESULTS}/collapse/collapse.parquet",
        md=f"{RESULTS}/collapse/collapse.md",
        png=report(f"{RESULTS}/collapse/collapse.png", caption="../report/collapse.rst", category="Collapse study"),
    params:
        runs=collapse_run_args,
        spec=spec(config["summary"]),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/collapse.log",
    benchmark:
        f"{RESULTS}/benchmarks/collapse.tsv"
    threads: 1
    resources:
        mem="4GB",
        runtime="15m",
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.collapse {params.runs:q} --reference {input.sft:q} --spec {params.spec:q} "
        "--seed {params.seed} --out-parquet {output.parquet:q} --out-md {output.md:q} "
        "--out-png {output.png:q} > {log:q} 2>&1"
