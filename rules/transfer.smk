# Cross-domain transfer (config `transfer`, workflow/transfer.py): a run's adapter trained on dataset
# {trained_on} evaluated on {dataset}'s test samples, with {dataset}'s prompts, domain word, items and
# title embeddings: rule evaluate (evaluation_inputs takes the adapter from {trained_on}) at other paths.
from workflow.dag import transfer_part, transfer_path
from workflow.transfer import transfers

TRANSFER = ("{dataset}", "{trained_on}", "{run}", "{selection}", "{split}")  # a transferred run on one split
try:  # the config's `transfer` list, checked when the workflow is parsed (errors name the entry)
    transfers(config)
except ValueError as exc:
    raise WorkflowError(str(exc)) from exc


use rule evaluate as evaluate_transfer with:
    output:
        predictions=transfer_path(config, *TRANSFER, "predictions.parquet"),
        metrics=transfer_path(config, *TRANSFER, "metrics.parquet"),
    wildcard_constraints:
        run=RUN_PATTERN["transfer"],
        trained_on="|".join(DATASETS),
    log: logged(transfer_part(*TRANSFER, "evaluate")),
    benchmark: benchmarked(transfer_part(*TRANSFER, "evaluate")),
    resources: **job_resources("evaluate_transfer", "8GB", "2h", gpus=LLM_GPUS),
