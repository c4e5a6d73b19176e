# The LLM engine's training side: the base model converted once, then LoRA SFT per run
# (`sft-{prompt}[-e..][-n..][-s..]`, workflow/runs.py) and selection. Training stages take the run's
# seed (training_seed) and selection (training_selection: `random` drawn per seed), rules/common.smk.


rule preflight:
    """A GPU config's first job, on a GPU node: CUDA present, enough GPUs, a driver new enough for
    this torch build, bitsandbytes for k-bit loading (workflow/preflight.py)."""
    output:
        f"{RESULTS}/preflight/gpu.json",
    params:
        spec=lambda wildcards: spec({"llm": config["llm"]}),
    log:
        f"{RESULTS}/logs/preflight.log",
    threads: 1
    resources:
        **job_resources("preflight", "2GB", "10m", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "python -m workflow.preflight --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule base_model:
    input:
        preflight_flag,
    output:
        directory(f"{RESULTS}/models/base"),
    params:
        base_model=config["llm"]["base_model"],
    log:
        f"{RESULTS}/logs/models/base_model.log",
    benchmark:
        f"{RESULTS}/benchmarks/models/base_model.tsv"
    threads: JOB_THREADS
    resources:
        **job_resources("base_model", "6GB", "30m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.llm.model --base-model {params.base_model:q} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"


rule sft:
    input:
        model=f"{RESULTS}/models/base",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        selection=training_selection,
    output:
        directory(f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter"),
    wildcard_constraints:
        run=RUN_PATTERN["sft"],
    params:
        launch=LAUNCH,
        spec=sft_spec,
        seed=training_seed,
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/train.tsv"
    priority: 10  # the chain every tuned result waits for (sft -> reference -> preference) starts first
    threads: JOB_THREADS
    resources:
        **job_resources("sft", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.sft --model-dir {input.model:q} --samples {input.samples:q} "
        "--items {input.item_table:q} --selection {input.selection:q} --spec {params.spec:q} "
        "--seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule hybrid:
    """LLaRA (one LoRA) or iLoRA (gated LoRA experts) on the hybrid prompt: SASRec item embeddings
    after the titles, a fresh adapter on the base model (workflow/llm/llara.py)."""
    input:
        model=f"{RESULTS}/models/base",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        selection=training_selection,
        item_vectors=f"{RESULTS}/{{dataset}}/surrogate/item_embeddings.parquet",
        sequence_vectors=f"{RESULTS}/{{dataset}}/surrogate/sequence_repr.parquet",
    output:
        directory(f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter"),
    wildcard_constraints:
        run=RUN_PATTERN["hybrid"],
    params:
        launch=LAUNCH,
        method=lambda wildcards: parse_run(wildcards.run).method,
        spec=hybrid_spec,
        surrogate=lambda wildcards, input: Path(input.item_vectors).parent,
        seed=training_seed,
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/train.tsv"
    threads: JOB_THREADS
    resources:
        **job_resources("hybrid", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.llara --method {params.method} --model-dir {input.model:q} "
        "--samples {input.samples:q} --items {input.item_table:q} --selection {input.selection:q} "
        "--surrogate {params.surrogate:q} --spec {params.spec:q} --seed {params.seed} --threads {threads} "
        "--out {output:q} > {log:q} 2>&1"
