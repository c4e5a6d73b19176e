# The input functions and specs of rules/explain.smk.


def explanation_reference(wildcards):
    """The reference model's adapter as a named input: the sft run a preference run started from (a
    SOFT run self-distilled from); none for sft, whose reference is the base model."""
    return {} if parse_run(wildcards.run).method == "sft" else {"reference": sft_file("adapter")(wildcards)}


def explanation_spec(wildcards):
    """The config blocks the explanation stage reads (the test split's predictions, batch size)."""
    return run_spec(wildcards, evaluation={**config["evaluation"], "splits": ["test"]},
                    explanations=config["explanations"])


