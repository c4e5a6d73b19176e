# Tuning (workflow/tuning.py): each method of `tuning.spaces` runs as the study `tuning-<method>` on
# the validation split; the selection picks each method's best trial (a checkpoint: the test runs
# it asks for are known once it has run); the tuned table reads the test split of those runs only.
# SASRec's trials train through the surrogate's own code (workflow/surrogate.py --trial), on the first dataset.
include: "tuning_inputs.smk"

TRIAL = sasrec_trial_part("{dataset}", "{trial}", "{seed}")  # one SASRec trial at one seed: its logs' part
SASREC_TRIAL = f"{RESULTS}/{TRIAL}"  # its folder


checkpoint tuning_selection:
    input: **tuning_selection_inputs(config),
    output: parquet=tuning_path(config, "selected.parquet"), overlay=tuning_path(config, "tuned.yaml"),
    params: spec=tuning_selection_spec(config),
    log: logged("tuning/selection"),
    benchmark: benchmarked("tuning/selection"),
    resources: **job_resources("tuning_selection", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.tuning select --spec {params.spec:q} --out-parquet {output.parquet:q} "
        "--out-overlay {output.overlay:q} > {log:q} 2>&1"


rule tuning_table:
    input:
        selected=tuning_path(config, "selected.parquet"),
        runs=lambda wildcards: [r["path"] for r in tuned_runs(wildcards)],
    output: **tuned_files(config),
    params: spec=lambda wildcards: spec_arg(tuning_table_spec(config, tuned_runs(wildcards))), seed=config["seed"],
    log: logged("tuning/table"),
    benchmark: benchmarked("tuning/table"),
    resources: **job_resources("tuning_table", "4GB", "15m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.tuning table --spec {params.spec:q} --selected {input.selected:q} --seed {params.seed} "
        "--out-parquet {output.parquet:q} --out-md {output.md:q} > {log:q} 2>&1"


rule sasrec_trial:
    input: **dataset_files(config, "{dataset}"),
    output: model=f"{SASREC_TRIAL}/model.pt", meta=f"{SASREC_TRIAL}/model.json", valid=f"{SASREC_TRIAL}/valid.parquet",
    wildcard_constraints: trial="[^/]+", seed="[0-9]+",
    params: spec=lambda wildcards: spec_arg(sasrec_trial_settings(config, wildcards.trial)),
            out_dir=lambda wildcards, output: Path(output.valid).parent,
    log: logged(f"{TRIAL}/train"),
    benchmark: benchmarked(f"{TRIAL}/train"),
    threads: JOB_THREADS
    resources: **surrogate_resources(config, "8GB", "2h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.surrogate --trial --samples {input.samples:q} --items {input.item_table:q} --out-dir "
        "{params.out_dir:q} --dataset {wildcards.dataset:q} --spec {params.spec:q} --seed {wildcards.seed} "
        "--threads {threads} > {log:q} 2>&1"


rule sasrec_trial_test:
    input: **dataset_files(config, "{dataset}"), model=f"{SASREC_TRIAL}/model.pt", meta=f"{SASREC_TRIAL}/model.json",
    output: f"{SASREC_TRIAL}/test.parquet",
    wildcard_constraints: trial="[^/]+", seed="[0-9]+",
    params: out_dir=lambda wildcards, output: Path(output[0]).parent,
    log: logged(f"{TRIAL}/test"),
    benchmark: benchmarked(f"{TRIAL}/test"),
    threads: JOB_THREADS
    resources: **surrogate_resources(config, "4GB", "30m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.surrogate --test-of {params.out_dir:q} --samples {input.samples:q} --items "
        "{input.item_table:q} --out-dir {params.out_dir:q} --dataset {wildcards.dataset:q} --threads {threads} "
        "> {log:q} 2>&1"
