# Tuning (workflow/tuning.py): each method of `tuning.spaces` runs as the study `tuning-<method>` on
# the validation split; the selection picks each method's best trial (a checkpoint: the test runs
# it asks for are known once it has run); the tuned table reads the test split of those runs only.
include: "tuning_inputs.smk"


checkpoint tuning_selection:
    input: [f"{RESULTS}/studies/{name}.parquet" for name in tuning_studies(config)],
    output: parquet=f"{RESULTS}/tuning/selected.parquet", overlay=f"{RESULTS}/tuning/tuned.yaml",
    params: spec=spec(tuning_selection_spec(config, lambda name: f"{RESULTS}/studies/{name}.parquet")),
    log: logged("tuning/selection"),
    benchmark: benchmarked("tuning/selection"),
    resources: **job_resources("tuning_selection", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.tuning select --spec {params.spec:q} --out-parquet {output.parquet:q} "
        "--out-overlay {output.overlay:q} > {log:q} 2>&1"



rule tuning_table:
    input: selected=f"{RESULTS}/tuning/selected.parquet", runs=lambda wildcards: [r["path"] for r in tuned_runs(wildcards)],
    output: parquet=f"{RESULTS}/tuning/tuned.parquet", md=f"{RESULTS}/tuning/tuned.md",
    params:
        spec=lambda wildcards: spec({"metrics": config["tuning"]["metrics"], "protocol": config["tuning"]["protocol"],
                                     "claims": config["tuning"]["claims"], "runs": tuned_runs(wildcards),
                                     "bootstrap": config["summary"]["bootstrap"], "ci": config["summary"]["ci"]}),
        seed=config["seed"],
    log: logged("tuning/table"),
    benchmark: benchmarked("tuning/table"),
    resources: **job_resources("tuning_table", "4GB", "15m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.tuning table --spec {params.spec:q} --selected {input.selected:q} --seed {params.seed} "
        "--out-parquet {output.parquet:q} --out-md {output.md:q} > {log:q} 2>&1"
