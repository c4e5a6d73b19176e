# Few-shot training-data selection for the LLM methods: random/all, and DEALRec (influence on the
# SASRec surrogate + effort on the LLM + coverage-enhanced sampling; workflow/selection/). Each score
# stage gets only its own config slice, so changing one (e.g. the LiSSA depth) does not rerun the other.
from pathlib import Path

from workflow.dag import budget_inputs, dealrec_inputs, dealrec_score_args, effort_inputs, effort_spec
from workflow.selection.dealrec import STRATEGIES as DEALREC_STRATEGIES


# random or all; `random-s{seed}` is random drawn at another training seed (config `seeds`, workflow/dag.py
# selection_file): the config seed's is random.parquet, so a default config's jobs stay as they were.
rule select_training_data:
    input: **dataset_files(config, "{dataset}", "samples"),
    output: f"{RESULTS}/{{dataset}}/selection/{{selection}}.parquet",
    wildcard_constraints: selection="random|all|random-s[0-9]+",
    params:
        budget=config["selection"]["budget"],
        strategy=lambda wildcards: wildcards.selection.partition("-s")[0],
        seed=lambda wildcards: wildcards.selection.partition("-s")[2] or config["seed"],
    log: logged("{dataset}/selection/{selection}"),
    benchmark: benchmarked("{dataset}/selection/{selection}"),
    resources: **job_resources("select_training_data", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection --samples {input.samples:q} --strategy {params.strategy} --budget "
        "{params.budget} --seed {params.seed} --out {output:q} > {log:q} 2>&1"


rule influence_scores:
    input:
        **surrogate_files(config, "{dataset}", "model", "meta"),
        **dataset_files(config, "{dataset}", "samples"),
    output: f"{RESULTS}/{{dataset}}/selection/scores/influence.parquet",
    params:
        surrogate=lambda wildcards, input: str(Path(input.model).parent),
        spec=lambda wildcards: spec_arg({"dealrec": {"influence": config["selection"]["dealrec"]["influence"]}}),
        seed=config["seed"],
    log: logged("{dataset}/selection/influence_scores"),
    benchmark: benchmarked("{dataset}/selection/influence_scores"),
    threads: JOB_THREADS
    resources: **job_resources("influence_scores", "4GB", "1h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection.influence --surrogate {params.surrogate:q} --samples {input.samples:q} --spec "
        "{params.spec:q} --seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule effort_scores:
    input: unpack(partial(effort_inputs, config)),
    output: f"{RESULTS}/{{dataset}}/selection/scores/effort.parquet",
    params: launch=LAUNCH_ONE, adapter=optional_args, spec=partial(effort_spec, config), seed=config["seed"],
    log: logged("{dataset}/selection/effort_scores"),
    benchmark: benchmarked("{dataset}/selection/effort_scores"),
    priority: 10  # the longest job before the DEALRec selection: starts with the sft chain (see rule sft)
    threads: JOB_THREADS
    resources: **job_resources("effort_scores", "8GB", "6h", gpus=ONE_GPU),
    conda:
        LLM_ENV
    shell:
        "{params.launch} workflow.selection.effort --model-dir {input.model:q} --samples {input.samples:q} --items "
        "{input.item_table:q} --spec {params.spec:q} --seed {params.seed} --threads {threads} {params.adapter:q} "
        "--out {output:q} > {log:q} 2>&1"


rule select_dealrec:
    input: unpack(partial(dealrec_inputs, config)),
    output:
        selection=f"{RESULTS}/{{dataset}}/selection/{{selection}}.parquet",
        scores=f"{RESULTS}/{{dataset}}/selection/{{selection}}.scores.parquet",
    wildcard_constraints: selection="|".join(DEALREC_STRATEGIES),
    params:
        spec=lambda wildcards: spec_arg({"dealrec": config["selection"]["dealrec"]}),  # a string would be expanded
        scores=dealrec_score_args,
        budget=config["selection"]["budget"],
        seed=config["seed"],
    log: logged("{dataset}/selection/{selection}"),
    benchmark: benchmarked("{dataset}/selection/{selection}"),
    resources: **job_resources("select_dealrec", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection --samples {input.samples:q} --strategy {wildcards.selection} --budget "
        "{params.budget} --seed {params.seed} --spec {params.spec:q} {params.scores} --out {output.selection:q} > "
        "{log:q} 2>&1"


# A run's -n<budget> (selection_file): `budget` samples of its selection at its training seed,
# as a selection file of its own that every stage of the run reads (workflow/selection/budget.py).
rule budget_subset:
    input: unpack(partial(budget_inputs, config)),
    output: f"{RESULTS}/{{dataset}}/selection/budget/{{name}}-n{{budget}}-s{{seed}}.parquet",
    wildcard_constraints: name="[^/]+", budget="[0-9]+", seed="[0-9]+",
    log: logged("{dataset}/selection/budget/{name}-n{budget}-s{seed}"),
    benchmark: benchmarked("{dataset}/selection/budget/{name}-n{budget}-s{seed}"),
    resources: **job_resources("budget_subset", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection.budget --selection {input.selection:q} --budget {wildcards.budget} "
        "--seed {wildcards.seed} --out {output:q} > {log:q} 2>&1"
