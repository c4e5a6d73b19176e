# LLM-as-recommender workflow: raw datasets -> samples -> surrogate -> LLM methods -> one summary.
# Rules are thin; every stage is `python -m workflow.<stage>` (see workflow/).
from snakemake.utils import min_version, validate

min_version("9.20")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"


rule all:
    input:
        all_targets(),
    default_target: True
