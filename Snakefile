# LLM-as-recommender workflow: raw datasets -> samples -> surrogate -> LLM methods -> one summary.
# Rules are thin; every stage is `python -m workflow.<stage>` (see workflow/).
import sys

from snakemake.utils import min_version
from snakemake_interface_executor_plugins.settings import DeploymentMethod

# The package is `workflow`; import names from it only, never the package itself, which would
# shadow Snakemake's own `workflow` object here.
from workflow.config import validate as validate_config
from workflow.dag import check_rule_resources, shell_prefix
from workflow.failures import print_failed_logs

min_version("9.20")


configfile: "config/config.yaml"


report: "report/workflow.rst"


# JSON schema check with defaults filled; an error names the offending key (e.g. prepare.kcore).
# The overrides are typed by the schema: `--config 'sft={epochs: 2}'` gives Snakemake the string '2'.
validate_config(config, f"{workflow.basedir}/config/schema.yaml", overrides=workflow.config_settings.overwrite_config)

# Rules run `python -m workflow.<stage>` with this package, under Snakemake's interpreter (--sdm conda: the rule's).
CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
shell.prefix(shell_prefix(workflow.basedir, None if CONDA else sys.executable))


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/semantic_ids.smk"
include: "rules/surrogate.smk"
include: "rules/baselines.smk"
include: "rules/selection.smk"
include: "rules/llm.smk"
include: "rules/preference.smk"
include: "rules/soft.smk"
include: "rules/eval.smk"
include: "rules/transfer.smk"
include: "rules/explain.smk"
include: "rules/report.smk"
include: "rules/study.smk"
include: "rules/tuning.smk"


rule all:
    input: all_targets(config),
    default_target: True


check_rule_resources(config, [r.name for r in workflow.rules])


# Without a profile's `show-failed-logs`, Snakemake names a failed job's log but does not show it.
onerror:
    print_failed_logs(log, shown=workflow.output_settings.show_failed_logs)
