# Figures and tables of the HTML report. They are outputs of the workflow (in all_targets), so that
# `snakemake --report results/report.html` only collects them; captions are in report/.
# Input functions (trained_adapters, report_inputs) live in rules/common.smk.


rule report_summary:
    input:
        f"{RESULTS}/summary.parquet",
    output:
        html=report(f"{REPORT}/summary.html", caption="../report/summary.rst", category="Summary"),
        charts=report(
            directory(f"{REPORT}/metrics"),
            patterns=["{dataset}/{protocol}/{metric}.png"],
            caption="../report/metric.rst",
            category="Metrics",
            subcategory="{dataset}: {protocol}",
            labels={"metric": "{metric}"},
        ),
    params:
        ci=config["summary"]["ci"],
    log:
        f"{RESULTS}/logs/report/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/summary.tsv"
    threads: 1
    resources:
        **job_resources("report_summary", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report summary --summary {input:q} --ci {params.ci} --html {output.html:q} "
        "--charts {output.charts:q} > {log:q} 2>&1"


rule report_training:
    input:
        trained_adapters,
    output:
        report(f"{REPORT}/training/{{dataset}}.png", caption="../report/training.rst", category="Training",
               labels={"dataset": "{dataset}"}),
    log:
        f"{RESULTS}/logs/report/training/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/training/{{dataset}}.tsv"
    threads: 1
    resources:
        **job_resources("report_training", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report training --adapters {input:q} --dataset {wildcards.dataset} "
        "--out {output:q} > {log:q} 2>&1"


rule report_data:
    input:
        interactions=f"{RESULTS}/{{dataset}}/data/interactions.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
    output:
        html=report(f"{REPORT}/data/{{dataset}}.html", caption="../report/data.rst", category="Data",
                    labels={"dataset": "{dataset}", "content": "statistics"}),
        png=report(f"{REPORT}/data/{{dataset}}.png", caption="../report/data.rst", category="Data",
                   labels={"dataset": "{dataset}", "content": "distributions"}),
    log:
        f"{RESULTS}/logs/report/data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/data/{{dataset}}.tsv"
    threads: 1
    resources:
        **job_resources("report_data", "4GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report data --interactions {input.interactions:q} --items {input.item_table:q} "
        "--samples {input.samples:q} --dataset {wildcards.dataset} --html {output.html:q} --png {output.png:q} "
        "> {log:q} 2>&1"


# Runs last (its input is every other target), so every other job's benchmark record exists; it
# reads all of results/benchmarks, records of jobs from earlier configs included.
rule report_resources:
    input:
        report_inputs,
    output:
        report(f"{REPORT}/resources.png", caption="../report/resources.rst", category="Resources"),
    params:
        benchmarks=f"{RESULTS}/benchmarks",
    log:
        f"{RESULTS}/logs/report/resources.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/resources.tsv"
    threads: 1
    resources:
        **job_resources("report_resources", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report resources --benchmarks {params.benchmarks:q} --out {output:q} > {log:q} 2>&1"


rule gates:
    """iLoRA's expert showcase: the gate weights of the first test samples (workflow/llm/gates.py)."""
    input:
        adapter=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/adapter",
        item_vectors=f"{RESULTS}/{{dataset}}/surrogate/item_embeddings.parquet",
        sequence_vectors=f"{RESULTS}/{{dataset}}/surrogate/sequence_repr.parquet",
        samples=f"{RESULTS}/{{dataset}}/data/samples.parquet",
        item_table=f"{RESULTS}/{{dataset}}/data/items.parquet",
    output:
        parquet=f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/gates.parquet",
        png=report(f"{RESULTS}/{{dataset}}/llm/{{run}}/{{selection}}/gates.png", caption="../report/gates.rst",
                   category="iLoRA gates", labels={"run": "{run}", "selection": "{selection}"}),
    wildcard_constraints:
        run="ilora-.*",
    params:
        launch=LAUNCH_ONE,
        surrogate=lambda wildcards, input: Path(input.item_vectors).parent,
        n_samples=config["explanations"]["n_samples"],
    log:
        f"{RESULTS}/logs/{{dataset}}/llm/{{run}}/{{selection}}/gates.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/llm/{{run}}/{{selection}}/gates.tsv"
    threads: 1
    resources:
        **job_resources("gates", "2GB", "10m", gpus=ONE_GPU),
    conda:
        "../envs/cpu.yaml"
    shell:
        "{params.launch} workflow.llm.gates --adapter {input.adapter:q} --surrogate {params.surrogate:q} "
        "--samples {input.samples:q} --items {input.item_table:q} --n-samples {params.n_samples} "
        "--title '{wildcards.run} ({wildcards.selection})' "
        "--out-parquet {output.parquet:q} --out-png {output.png:q} > {log:q} 2>&1"
