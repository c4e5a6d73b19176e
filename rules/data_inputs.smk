# The datasets' check when the workflow is parsed, and what rules/data.smk's inputs read of it.
import re

from workflow.config import prepare_settings
from workflow.dag import download_specs, downloads_folder, ingest_spec, raw_inputs, sourced_datasets
from workflow.formats import IngestError

DOWNLOADS = downloads_folder(config)
try:
    SOURCED = sourced_datasets(config)
except IngestError as exc:
    raise WorkflowError(str(exc)) from None
DOWNLOAD_SPECS = download_specs(config, SOURCED)
