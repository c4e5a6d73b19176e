# Few-shot training-data selection for the LLM methods: random/all, and DEALRec (influence on the
# SASRec surrogate + effort on the LLM + coverage-enhanced sampling; workflow/selection/). Each score
# stage gets only its own config slice, so changing one (e.g. the LiSSA depth) does not rerun the other.
from pathlib import Path

from workflow.dag import (BUDGET_WILDCARDS, DEALREC_SELECTION, PLAIN_SELECTION, budget_inputs, budget_name,
                          budget_table, dealrec_inputs, dealrec_score_args, effort_inputs, effort_spec, score_table,
                          selection_part, selection_scores, selection_strategy, selection_table)

SELECTION = selection_part("{dataset}", "{selection}")  # a selection's logs' and benchmarks' part


# random or all; `random-s{seed}` is random drawn at another training seed (config `seeds`, workflow/dag.py
# selection_name): the config seed's is random.parquet, so a default config's jobs stay as they were.
rule select_training_data:
    input: **dataset_files(config, "{dataset}", "samples"),
    output: selection_table(config, "{dataset}", "{selection}"),
    wildcard_constraints: selection=PLAIN_SELECTION,
    params:
        budget=config["selection"]["budget"],
        strategy=lambda wildcards: selection_strategy(wildcards.selection)[0],
        seed=lambda wildcards: selection_strategy(wildcards.selection)[1] or config["seed"],
    log: logged(SELECTION),
    benchmark: benchmarked(SELECTION),
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
    output: score_table(config, "{dataset}", "influence"),
    params:
        surrogate=lambda wildcards, input: str(Path(input.model).parent),
        spec=lambda wildcards: spec_arg({"dealrec": {"influence": config["selection"]["dealrec"]["influence"]}}),
        seed=config["seed"],
    log: logged(selection_part("{dataset}", "influence_scores")),
    benchmark: benchmarked(selection_part("{dataset}", "influence_scores")),
    threads: JOB_THREADS
    resources: **job_resources("influence_scores", "4GB", "1h"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection.influence --surrogate {params.surrogate:q} --samples {input.samples:q} --spec "
        "{params.spec:q} --seed {params.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule effort_scores:
    input: unpack(partial(effort_inputs, config)),
    output: score_table(config, "{dataset}", "effort"),
    params: launch=LAUNCH_ONE, adapter=optional_args, spec=partial(effort_spec, config), seed=config["seed"],
    log: logged(selection_part("{dataset}", "effort_scores")),
    benchmark: benchmarked(selection_part("{dataset}", "effort_scores")),
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
        selection=selection_table(config, "{dataset}", "{selection}"),
        scores=selection_scores(config, "{dataset}", "{selection}"),
    wildcard_constraints: selection=DEALREC_SELECTION,
    params:
        spec=lambda wildcards: spec_arg({"dealrec": config["selection"]["dealrec"]}),  # a string would be expanded
        scores=dealrec_score_args,
        budget=config["selection"]["budget"],
        seed=config["seed"],
    log: logged(SELECTION),
    benchmark: benchmarked(SELECTION),
    resources: **job_resources("select_dealrec", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection --samples {input.samples:q} --strategy {wildcards.selection} --budget "
        "{params.budget} --seed {params.seed} --spec {params.spec:q} {params.scores} --out {output.selection:q} > "
        "{log:q} 2>&1"


# A run's -n<budget> (selection_file): `budget` samples of its selection at its training seed,
# as a selection file of its own that every stage of the run reads (workflow/selection/budget.py).
BUDGET = selection_part("{dataset}", "budget", budget_name("{name}", "{budget}", "{seed}"))  # logs' part


rule budget_subset:
    input: unpack(partial(budget_inputs, config)),
    output: budget_table(config, "{dataset}", "{name}", "{budget}", "{seed}"),
    wildcard_constraints: **BUDGET_WILDCARDS,
    log: logged(BUDGET),
    benchmark: benchmarked(BUDGET),
    resources: **job_resources("budget_subset", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.selection.budget --selection {input.selection:q} --budget {wildcards.budget} "
        "--seed {wildcards.seed} --out {output:q} > {log:q} 2>&1"
