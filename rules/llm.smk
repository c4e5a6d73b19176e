# The LLM engine's training side: the base model converted once, then LoRA SFT per run
# (`sft-{prompt}[-e..][-n..][-s..]`, workflow/runs.py) and selection, and LLaRA / iLoRA. Training stages
# take the run's seed and selection file (workflow/dag.py training_args, selection_file).
from workflow.dag import preflight_file


rule preflight:
    """A GPU config's first job, on a GPU node: CUDA present, enough GPUs, a driver new enough for
    this torch build, bitsandbytes for k-bit loading (workflow/preflight.py)."""
    output: preflight_file(config),
    params: spec=lambda wildcards: spec_arg({"llm": config["llm"]}),
    log: logged("preflight"),
    benchmark: benchmarked("preflight"),
    resources: **job_resources("preflight", "2GB", "10m", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "python -m workflow.preflight --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule base_model:
    # a GPU config stops before any work when CUDA is missing or unusable (rule preflight)
    input: [preflight_file(config)] if LLM_GPUS else [],
    output: directory(BASE_MODEL),
    params: base_model=config["llm"]["base_model"],
    log: logged("models/base_model"),
    benchmark: benchmarked("models/base_model"),
    threads: JOB_THREADS
    resources: **job_resources("base_model", "6GB", "30m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.llm.model --base-model {params.base_model:q} --out {output:q} --threads {threads} > "
        "{log:q} 2>&1"


rule sft:
    input: **TRAINING_INPUTS,
    output: directory(f"{RUN_DIR}/adapter"),
    wildcard_constraints: run=RUN_PATTERN["sft"],
    params: launch=LAUNCH, spec=partial(method_spec, config), args=training_args(config),
    log: logged(f"{RUN_LOG}/train"),
    benchmark: benchmarked(f"{RUN_LOG}/train"),
    priority: 10  # the chain every tuned result waits for (sft -> reference -> preference) starts first
    threads: JOB_THREADS
    resources: **job_resources("sft", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.sft {params.args:q} --spec {params.spec:q} > {log:q} 2>&1"


rule hybrid:
    """LLaRA (one LoRA) or iLoRA (gated LoRA experts) on the hybrid prompt: SASRec item embeddings
    after the titles, a fresh adapter on the base model (workflow/llm/llara.py)."""
    input: **TRAINING_INPUTS, **surrogate_tables(config, "{dataset}"),
    output: directory(f"{RUN_DIR}/adapter"),
    wildcard_constraints: run=RUN_PATTERN["hybrid"],
    params: launch=LAUNCH, method=run_method, surrogate=optional_args, spec=partial(method_spec, config),
            args=training_args(config),
    log: logged(f"{RUN_LOG}/train"),
    benchmark: benchmarked(f"{RUN_LOG}/train"),
    threads: JOB_THREADS
    resources: **job_resources("hybrid", "12GB", "4h", gpus=LLM_GPUS),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.llm.llara --method {params.method} {params.surrogate:q} {params.args:q} "
        "--spec {params.spec:q} > {log:q} 2>&1"
