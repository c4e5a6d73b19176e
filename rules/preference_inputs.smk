# The input functions of rules/preference.smk.


def preference_start(name):
    """An input function: a file of the run a preference run starts from and is referenced against
    (`name`: its adapter or its reference log-probs): the sft run of the same prompt, budget and
    seed; for an SPRec round after the first, the previous round (workflow/runs.py previous_round)."""
    def path(wildcards):
        run = parse_run(wildcards.run)
        start = previous_round(run, config) or run.sft()
        return f"{RESULTS}/{wildcards.dataset}/llm/{start.name}/{wildcards.selection}/{name}"
    return path
