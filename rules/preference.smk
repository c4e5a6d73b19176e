# Preference optimisation (DMPO, S-DPO, DynamicPO, LPO4Rec, NAPO, GRPO, SPRec), each run starting from the SFT
# adapter of its prompt, budget and selection, whose frozen copy is the reference (workflow/dag.py preference_inputs).
from workflow.dag import (preference_args, preference_inputs, preference_spec, reference_spec, sft_phase_spec,
                          start_file)


# The reference never changes: every candidate of every selected sample is scored once under the
# SFT model, and all preference runs from it (every method, every k, every epoch count) read this
# table; likewise under each SPRec round for the next, and under a round's SFT phase (`phase`).
rule reference_logprobs:
    input: **TRAINING_INPUTS, adapter=f"{RUN_DIR}/{{phase}}adapter",
    output: f"{RUN_DIR}/{{phase}}reference_logprobs.parquet",
    wildcard_constraints: run=RUN_PATTERN["referenced"], selection="[^/]+", phase="(?:sft_phase/)?",
    params: launch=LAUNCH_ONE, spec=partial(reference_spec, config), args=training_args(config),
    log: logged(f"{RUN_LOG}/{{phase}}reference_logprobs"),
    benchmark: benchmarked(f"{RUN_LOG}/{{phase}}reference_logprobs"),
    priority: 10  # on the chain every tuned result waits for (see rule sft)
    threads: JOB_THREADS
    resources: **job_resources("reference_logprobs", "8GB", "2h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.reference --adapter {input.adapter:q} {params.args:q} --spec {params.spec:q} "
        "> {log:q} 2>&1"


rule sprec_sft_phase:
    """SPRec's per-round SFT phase (`sprec.sft_phase`, the authors'): the round's start (the previous
    round; round 1: the sft run) trained one epoch further on the positives of the run's selection."""
    input: **TRAINING_INPUTS, adapter=lambda wildcards: start_file(config, wildcards, "adapter"),
    output: directory(f"{RUN_DIR}/sft_phase/adapter"),
    wildcard_constraints: run=RUN_PATTERN["sprec"], selection="[^/]+",
    params: launch=LAUNCH, spec=partial(sft_phase_spec, config), args=training_args(config),
    log: logged(f"{RUN_LOG}/sft_phase/train"),
    benchmark: benchmarked(f"{RUN_LOG}/sft_phase/train"),
    priority: 10  # on the chain every tuned result waits for (see rule sft)
    threads: JOB_THREADS
    resources: **job_resources("sft", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.sft --start-adapter {input.adapter:q} {params.args:q} --spec {params.spec:q} "
        "> {log:q} 2>&1"


rule preference:
    input: unpack(partial(preference_inputs, config)), **TRAINING_INPUTS,
    output: directory(f"{RUN_DIR}/adapter"),
    wildcard_constraints: run=RUN_PATTERN["preference"],
    params: launch=LAUNCH, method=run_method, tables=preference_args, spec=partial(preference_spec, config),
            args=training_args(config),
    log: logged(f"{RUN_LOG}/train"),
    benchmark: benchmarked(f"{RUN_LOG}/train"),
    priority: 10  # on the chain every tuned result waits for (see rule sft)
    threads: JOB_THREADS
    resources: **job_resources("preference", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.preference --method {params.method} --adapter {input.adapter:q} "
        "{params.tables:q} {params.args:q} --spec {params.spec:q} > {log:q} 2>&1"
