# SOFT (workflow/llm/soft.py): the sft backbone's self-distilled answers to its own training prompts,
# once per backbone and shared by every SOFT run of it (any alpha), then a fresh LoRA per SOFT run on
# the true and the self-distilled answers.
from workflow.dag import distill_spec, sft_file, stored_inputs


rule self_distill:
    input: **TRAINING_INPUTS, adapter=f"{RUN_DIR}/adapter",
    output: table=f"{RUN_DIR}/self_distilled.parquet", stats=f"{RUN_DIR}/self_distilled_stats.tsv",
    wildcard_constraints: run=RUN_PATTERN["sft"],
    params: launch=LAUNCH_ONE, spec=partial(distill_spec, config), args=training_args(config),
    log: logged(f"{RUN_LOG}/self_distill"),
    benchmark: benchmarked(f"{RUN_LOG}/self_distill"),
    priority: 10  # on the chain a SOFT result waits for (see rule sft)
    threads: JOB_THREADS
    resources: **job_resources("self_distill", "8GB", "2h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.soft distill --adapter {input.adapter:q} --stats {output.stats:q} "
        "{params.args:q} --spec {params.spec:q} > {log:q} 2>&1"


# soft.early_stopping validates each epoch by the grounded protocol: what it reads joins the inputs
SOFT_VALIDATION = stored_inputs(config, "{dataset}", ["grounded"]) if config["soft"]["early_stopping"] else {}


rule soft:
    input: **TRAINING_INPUTS, distilled=sft_file(config, "self_distilled.parquet"), **SOFT_VALIDATION,
    output: directory(f"{RUN_DIR}/adapter"),
    wildcard_constraints: run=RUN_PATTERN["soft"],
    params: launch=LAUNCH, spec=partial(method_spec, config), args=training_args(config), extra=optional_args,
    log: logged(f"{RUN_LOG}/train"),
    benchmark: benchmarked(f"{RUN_LOG}/train"),
    priority: 10  # on the chain a SOFT result waits for (see rule sft)
    threads: JOB_THREADS
    resources: **job_resources("soft", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.soft train --distilled {input.distilled:q} {params.args:q} "
        "--spec {params.spec:q} {params.extra:q} > {log:q} 2>&1"
