# Studies: a grid of config variants of some methods -> runs (trained and evaluated by the other
# rules) -> one table and plot (workflow/study.py).
from workflow.dag import study_file, study_part, study_runs, study_spec


# The study's runs and the baselines it draws as lines (popularity, SASRec; per dataset).
rule study:
    input:
        runs=lambda wildcards: [path for _, path, _ in study_runs(config, wildcards.study)],
        baselines=baseline_metrics(config),
    output:
        parquet=study_file(config, "{study}", "parquet"),
        md=study_file(config, "{study}", "md"),
        png=report(study_file(config, "{study}", "png"), caption="../report/study.rst", category="Studies",
                   labels={"study": "{study}"}),
    params: spec=lambda wildcards: study_spec(config, wildcards.study), seed=config["seed"],
    log: logged(study_part("{study}")),
    benchmark: benchmarked(study_part("{study}")),
    resources: **job_resources("study", "4GB", "15m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.study --spec {params.spec:q} --baselines {input.baselines:q} --seed {params.seed} "
        "--out-parquet {output.parquet:q} --out-md {output.md:q} --out-png {output.png:q} > {log:q} 2>&1"
