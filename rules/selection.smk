# Few-shot training-data selection for the LLM methods: random/all, and DEALRec (influence on the
# SASRec surrogate + effort on the LLM + coverage-enhanced sampling; workflow/selection/).


rule select_training_data:
    input:
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
    output:
        f"{RESULTS}/{{dataset}}/selection/{{selection}}.parquet",
    wildcard_constraints:
        selection="random|all",
    params:
        budget=config["selection"]["budget"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/selection/{{selection}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/selection/{{selection}}.tsv"
    threads: 1
    resources:
        **job_resources("select_training_data", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection --samples {input.samples:q} --strategy {wildcards.selection} "
        "--budget {params.budget} --seed {params.seed} --out {output:q} > {log:q} 2>&1"


# The random selection of another training seed (config `seeds`; training_selection in common.smk);
# the config seed's is random.parquet above, so a default config's jobs stay as they were.
rule select_random_at_seed:
    input:
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
    output:
        f"{RESULTS}/{{dataset}}/selection/random-s{{seed}}.parquet",
    wildcard_constraints:
        seed="[0-9]+",
    params:
        budget=config["selection"]["budget"],
    log:
        f"{RESULTS}/logs/{{dataset}}/selection/random-s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/selection/random-s{{seed}}.tsv"
    threads: 1
    resources:
        **job_resources("select_random_at_seed", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection --samples {input.samples:q} --strategy random "
        "--budget {params.budget} --seed {wildcards.seed} --out {output:q} > {log:q} 2>&1"


rule influence_scores:
    input:
        model=f"{RESULTS}/{{dataset}}/surrogate/model.pt",
        meta=f"{RESULTS}/{{dataset}}/surrogate/model.json",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
    output:
        f"{RESULTS}/{{dataset}}/selection/scores/influence.parquet",
    params:
        surrogate=lambda wildcards, input: str(Path(input.model).parent),
        spec=influence_spec,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/selection/influence_scores.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/selection/influence_scores.tsv"
    threads: JOB_THREADS
    resources:
        **job_resources("influence_scores", "4GB", "1h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection.influence --surrogate {params.surrogate:q} --samples {input.samples:q} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule effort_scores:
    input:
        unpack(effort_adapter),
        model=f"{RESULTS}/models/base",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
    output:
        f"{RESULTS}/{{dataset}}/selection/scores/effort.parquet",
    params:
        launch=LAUNCH_ONE,
        adapter=adapter_args,
        spec=effort_spec,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/selection/effort_scores.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/selection/effort_scores.tsv"
    priority: 10  # the longest job before the DEALRec selection: starts with the sft chain (see rule sft)
    threads: JOB_THREADS
    resources:
        **job_resources("effort_scores", "8GB", "6h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.selection.effort --model-dir {input.model:q} --samples {input.samples:q} "
        "--items {input.item_table:q} --spec {params.spec:q} --seed {params.seed} --threads {threads} "
        "{params.adapter:q} --out {output:q} > {log:q} 2>&1"


rule select_dealrec:
    input:
        unpack(dealrec_inputs),
    output:
        selection=f"{RESULTS}/{{dataset}}/selection/{{selection}}.parquet",
        scores=f"{RESULTS}/{{dataset}}/selection/{{selection}}.scores.parquet",
    wildcard_constraints:
        selection="dealrec|influence|effort",
    params:
        spec=dealrec_spec,
        scores=dealrec_score_args,
        budget=config["selection"]["budget"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/selection/{{selection}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/selection/{{selection}}.tsv"
    threads: 1
    resources:
        **job_resources("select_dealrec", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection --samples {input.samples:q} --strategy {wildcards.selection} "
        "--budget {params.budget} --seed {params.seed} --spec {params.spec:q} {params.scores} "
        "--out {output.selection:q} > {log:q} 2>&1"
