# The random (exact expectation) and popularity (train-split target counts) baselines on the
# stored candidate sets and in full ranking: the floor every LLM row is read against.
from workflow.dag import baselines_file


rule baselines:
    input: **dataset_files(config, "{dataset}"),
    output: baselines_file(config, "{dataset}"),
    params: seed=config["seed"],
    log: logged("{dataset}/baselines"),
    benchmark: benchmarked("{dataset}/baselines"),
    resources: **job_resources("baselines", "4GB", "30m"),
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow.baselines --samples {input.samples:q} --items {input.item_table:q} --dataset "
        "{wildcards.dataset:q} --seed {params.seed} --out {output:q} > {log:q} 2>&1"
