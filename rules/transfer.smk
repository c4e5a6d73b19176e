# Cross-domain transfer (config `transfer`, workflow/transfer.py): a run's adapter trained on dataset
# {trained_on} evaluated on {dataset}'s test samples, with {dataset}'s prompts, domain word, items and
# title embeddings: rule evaluate (evaluation_inputs takes the adapter from {trained_on}) at other paths.
from workflow.transfer import transfers

TRANSFER_DIR = "{dataset}/transfer/{trained_on}/{run}/{selection}/{split}"
try:  # the config's `transfer` list, checked when the workflow is parsed (errors name the entry)
    transfers(config)
except ValueError as exc:
    raise WorkflowError(str(exc)) from exc


use rule evaluate as evaluate_transfer with:
    output:
        predictions=f"{RESULTS}/{TRANSFER_DIR}/predictions.parquet",
        metrics=f"{RESULTS}/{TRANSFER_DIR}/metrics.parquet",
    wildcard_constraints:
        run=RUN_PATTERN["transfer"],
        trained_on="|".join(DATASETS),
    log: logged(f"{TRANSFER_DIR}/evaluate"),
    benchmark: benchmarked(f"{TRANSFER_DIR}/evaluate"),
    resources: **job_resources("evaluate_transfer", "8GB", "2h", gpus=LLM_GPUS),
