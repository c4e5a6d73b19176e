# Figures and tables of the HTML report. They are outputs of the workflow (workflow/dag.py report_targets),
# so that `snakemake --report results/report.html` only collects them; captions are in report/.
from workflow.dag import PAGE_PATTERN, benchmarks_folder, page_html, page_table, report_path, trained_adapters

REPORT = report_path(config)
RESOURCES_FIGURE = report_path(config, "resources.png")


rule report_summary:
    input: summary_files(config)["parquet"],
    output:
        html=report(f"{REPORT}/summary.html", caption="../report/summary.rst", category="Summary"),
        charts=report(directory(f"{REPORT}/metrics"), patterns=["{dataset}/{protocol}/{metric}.png"],
                      caption="../report/metric.rst", category="Metrics", subcategory="{dataset}: {protocol}",
                      labels={"metric": "{metric}"}),
    params: ci=config["summary"]["ci"],
    log: logged("report/summary"),
    benchmark: benchmarked("report/summary"),
    resources: **job_resources("report_summary", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report summary --summary {input:q} --ci {params.ci} --html {output.html:q} --charts "
        "{output.charts:q} > {log:q} 2>&1"


rule report_training:
    input: lambda wildcards: trained_adapters(config, wildcards.dataset),  # their loss curves
    output:
        report(f"{REPORT}/training/{{dataset}}.png", caption="../report/training.rst", category="Training",
               labels={"dataset": "{dataset}"}),
    log: logged("report/training/{dataset}"),
    benchmark: benchmarked("report/training/{dataset}"),
    resources: **job_resources("report_training", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report training --adapters {input:q} --dataset {wildcards.dataset} --out {output:q} > "
        "{log:q} 2>&1"


rule report_data:
    input: **dataset_files(config, "{dataset}", "interactions", "item_table", "samples"),
    output:
        html=report(f"{REPORT}/data/{{dataset}}.html", caption="../report/data.rst", category="Data",
                    labels={"dataset": "{dataset}", "content": "statistics"}),
        png=report(f"{REPORT}/data/{{dataset}}.png", caption="../report/data.rst", category="Data",
                   labels={"dataset": "{dataset}", "content": "distributions"}),
    log: logged("report/data/{dataset}"),
    benchmark: benchmarked("report/data/{dataset}"),
    resources: **job_resources("report_data", "4GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report data --interactions {input.interactions:q} --items {input.item_table:q} --samples "
        "{input.samples:q} --dataset {wildcards.dataset} --html {output.html:q} --png {output.png:q} > {log:q} 2>&1"


# A study's table or the tuned table as an HTML page of the report (workflow/report.py markdown_page).
rule report_page:
    input: page_table(config, "{page}"),
    output:
        report(page_html(config, "{page}"), caption="../report/table.rst", category="Tables",
               labels={"table": "{page}"}),
    wildcard_constraints: page=PAGE_PATTERN,
    log: logged("report/tables/{page}"),
    benchmark: benchmarked("report/tables/{page}"),
    resources: **job_resources("report_page", "1GB", "5m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report page --md {input:q} --html {output:q} > {log:q} 2>&1"


# Runs last (its input is every other target), so every other job's benchmark record exists; it
# reads all of results/benchmarks, records of jobs from earlier configs included.
rule report_resources:
    input: lambda wildcards: [t for t in all_targets(config) if t != RESOURCES_FIGURE],
    output: report(RESOURCES_FIGURE, caption="../report/resources.rst", category="Resources"),
    params: benchmarks=benchmarks_folder(config),
    log: logged("report/resources"),
    benchmark: benchmarked("report/resources"),
    resources: **job_resources("report_resources", "2GB", "10m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.report resources --benchmarks {params.benchmarks:q} --out {output:q} > {log:q} 2>&1"


rule gates:
    """iLoRA's expert showcase: the gate weights of the first test samples (workflow/llm/gates.py)."""
    input:
        adapter=f"{RUN_DIR}/adapter",
        **surrogate_tables(config, "{dataset}"),
        **dataset_files(config, "{dataset}"),
    output:
        parquet=f"{RUN_DIR}/gates.parquet",
        png=report(f"{RUN_DIR}/gates.png", caption="../report/gates.rst", category="iLoRA gates",
                   labels={"run": "{run}", "selection": "{selection}"}),
    wildcard_constraints: run=RUN_PATTERN["ilora"],
    params: launch=LAUNCH_ONE, inputs=optional_args, n_samples=config["explanations"]["n_samples"],
    log: logged(f"{RUN_LOG}/gates"),
    benchmark: benchmarked(f"{RUN_LOG}/gates"),
    resources: **job_resources("gates", "2GB", "10m", gpus=ONE_GPU),
    conda:
        "../envs/cpu.yaml"
    shell:
        "{params.launch} workflow.llm.gates {params.inputs:q} --samples {input.samples:q} --items "
        "{input.item_table:q} --n-samples {params.n_samples} --title '{wildcards.run} ({wildcards.selection})' "
        "--out-parquet {output.parquet:q} --out-png {output.png:q} > {log:q} 2>&1"
