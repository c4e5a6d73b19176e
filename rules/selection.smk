# Few-shot training-data selection for the LLM methods.


rule select_training_data:
    input:
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
    output:
        f"{RESULTS}/{{dataset}}/selection/{{selection}}.parquet",
    params:
        budget=config["selection"]["budget"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/{{dataset}}/selection/{{selection}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/selection/{{selection}}.tsv"
    threads: 1
    resources:
        mem="2GB",
        runtime="10m",
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection --samples {input.samples:q} --strategy {wildcards.selection} "
        "--budget {params.budget} --seed {params.seed} --out {output:q} > {log:q} 2>&1"
