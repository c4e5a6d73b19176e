# The input functions of rules/explain.smk.
from workflow.dag import explanation_spec


def explanation_reference(wildcards):
    """The reference model's adapter as a named input: the sft run a preference run started from (a
    SOFT run self-distilled from); none for sft, whose reference is the base model."""
    return {} if parse_run(wildcards.run).method == "sft" else {"reference": sft_file("adapter")(wildcards)}
